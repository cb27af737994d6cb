"""The registry: decorator, duplicate names, unknown names, and entry-point plugins."""

import sys
import warnings
from pathlib import Path

import pytest

from tests.plugins import write_plugin
from vaezoo.errors import VAEZooError
from vaezoo.registry import NETS, VARIANTS, Registry, format_table


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith("vz_test_")]:
        del sys.modules[name]


def test_builtins_are_registered() -> None:
    assert {"vanilla", "beta"} <= set(VARIANTS.names())
    assert {"mlp", "conv"} <= set(NETS.names())
    table = format_table()
    assert "beta-VAE of Higgins" in table and "vaezoo.models.beta.BetaVAE" in table


def test_duplicate_name_is_a_clear_error() -> None:
    reg = Registry("variant", "vaezoo.nothing")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(VAEZooError, match=r"variant name 'a' is already registered by .*A"):

        @reg.register("a")
        class B:
            pass


def test_unknown_name_lists_the_known_ones_and_a_close_match() -> None:
    with pytest.raises(VAEZooError, match=r"unknown variant 'bta'\. Did you mean 'beta'\?.*Known variants: beta"):
        VARIANTS.get("bta")


def test_entry_point_plugin_is_discovered(site: Path) -> None:
    write_plugin(site, "vz-good", "vz_test_good", '''
        class Plain:
            """A bare class, registered under its entry-point name."""
    ''', {"vaezoo.test_variants": {"plain": "vz_test_good:Plain"}})
    reg = Registry("variant", "vaezoo.test_variants")
    reg.load_plugins()
    assert reg.names() == ["plain"]
    entry = next(iter(reg))
    assert entry.description == "A bare class, registered under its entry-point name."
    assert entry.source == "plugin vz-good 0.1 (vaezoo.test_variants: plain)"


def test_broken_plugin_warns_by_name_and_the_rest_load(site: Path) -> None:
    write_plugin(site, "vz-broken", "vz_test_broken", "raise RuntimeError('boom at import')\n",
                 {"vaezoo.test_variants": {"broken": "vz_test_broken:X"}})
    write_plugin(site, "vz-fine", "vz_test_fine", "class Fine:\n    pass\n",
                 {"vaezoo.test_variants": {"fine": "vz_test_fine:Fine"}})
    reg = Registry("variant", "vaezoo.test_variants")
    with pytest.warns(UserWarning, match=r"plugin 'broken' \(vz_test_broken:X, from vz-broken 0.1\).*boom at import"):
        reg.load_plugins()
    assert reg.names() == ["fine"]


def test_plugin_taking_a_builtin_name_warns_and_keeps_the_builtin(site: Path) -> None:
    write_plugin(site, "vz-clash", "vz_test_clash", '''
        from vaezoo import VAE, register_variant

        @register_variant("beta")
        class MyBeta(VAE):
            """Clashes with the built-in beta."""
    ''', {"vaezoo.variants": {"mybeta": "vz_test_clash:MyBeta"}})
    VARIANTS._plugins_loaded = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            VARIANTS.load_plugins()
    finally:
        VARIANTS._plugins_loaded = True
    messages = [str(w.message) for w in caught]
    assert any("'mybeta'" in m and "'beta' is already registered by vaezoo.models.beta.BetaVAE" in m for m in messages)
    assert VARIANTS.get("beta").__name__ == "BetaVAE"


def test_package_exports_every_public_name_lazily() -> None:
    import vaezoo

    assert sorted(vaezoo._EXPORTS) == sorted(n for n in vaezoo.__all__ if n != "__version__")
    for name in vaezoo.__all__:
        assert getattr(vaezoo, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        vaezoo.Nope  # noqa: B018
