"""The registry: decorator, duplicate names, unknown names, and entry-point plugins."""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

from tests.plugins import DEMO_VARIANT, write_plugin
from tests.test_cli import REPO
from vaezoo.errors import VAEZooError
from vaezoo.registry import DATASETS, LIKELIHOODS, NETS, VARIANTS, Registry, format_table


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


def test_entry_point_naming_a_function_or_a_constant_warns_by_name(site: Path) -> None:
    write_plugin(site, "vz-odd", "vz_test_odd", "def make():\n    pass\n\nWIDTH = 3\n\nclass Fine:\n    pass\n",
                 {"vaezoo.test_variants": {"maker": "vz_test_odd:make", "width": "vz_test_odd:WIDTH",
                                           "fine": "vz_test_odd:Fine"}})
    reg = Registry("variant", "vaezoo.test_variants")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.load_plugins()
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages
    assert messages[0].startswith("vaezoo variant plugin 'maker' (vz_test_odd:make, from vz-odd 0.1) names an object "
                                  "of type function, not a class or a module, and is skipped.")
    assert messages[1].startswith("vaezoo variant plugin 'width' (vz_test_odd:WIDTH, from vz-odd 0.1) names an object "
                                  "of type int, ")
    assert reg.names() == ["fine"]


def test_plugins_that_exit_name_no_class_or_take_a_builtin_name_do_not_stop_vaezoo_variants(tmp_path: Path) -> None:
    """Through the real command: before, a plugin's sys.exit() at import ended `vaezoo variants` with no output."""
    site = write_plugin(tmp_path / "site", "vz-exits", "vz_exits", "import sys\n\nsys.exit(3)\n",
                        {"vaezoo.variants": {"exits": "vz_exits:Anything"}})
    write_plugin(site, "vz-clash", "vz_clash", '''
        from vaezoo import VAE, register_variant

        @register_variant("beta")
        class MyBeta(VAE):
            """Clashes with the built-in beta."""
    ''', {"vaezoo.variants": {"mybeta": "vz_clash:MyBeta"}})
    write_plugin(site, "vz-function", "vz_function", "def helper():\n    pass\n",
                 {"vaezoo.nets": {"helper": "vz_function:helper"}})
    write_plugin(site, "vaezoo-halfkl", "vz_halfkl", DEMO_VARIANT,
                 {"vaezoo.variants": {"halfkl": "vz_halfkl:HalfKLVAE"}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "vaezoo", "variants"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "halfkl" in done.stdout and "nets (vaezoo.nets):" in done.stdout
    assert ("vaezoo variant plugin 'exits' (vz_exits:Anything, from vz-exits 0.1) failed to load and is skipped: "
            "it called sys.exit(3) when imported") in done.stderr
    assert "vaezoo net plugin 'helper' (vz_function:helper, from vz-function 0.1) names an object of type function" in (
        done.stderr)
    assert ("vaezoo variant plugin 'mybeta' (vz_clash:MyBeta, from vz-clash 0.1) failed to load and is skipped: "
            "VAEZooError: variant name 'beta' is already registered by vaezoo.models.beta.BetaVAE") in done.stderr
    assert "[vaezoo: vaezoo.models.beta.BetaVAE]" in next(line for line in done.stdout.splitlines()
                                                          if line.split()[:1] == ["beta"])


def test_class_path_of_a_module_in_the_working_directory(tmp_path: Path) -> None:
    """docs/extending.md: `vaezoo fit ... --model my_vaes.FreeBitsVAE` with my_vaes.py in the working directory,
    through the installed console script, whose sys.path[0] is its bin/ folder, not the working directory."""
    script = Path(sys.executable).parent / "vaezoo"
    if not script.is_file():
        pytest.skip(f"no console script at {script} (vaezoo not installed in this environment)")
    (tmp_path / "my_vaes.py").write_text(textwrap.dedent('''
        import torch
        from vaezoo import VAE


        class FreeBitsVAE(VAE):
            """VAE with free bits."""

            def __init__(self, lam: float = 0.5, **kwargs) -> None:
                super().__init__(**kwargs)
                self.lam = lam

            def loss(self, out) -> torch.Tensor:
                return out.recon.mean() + out.kl_per_dim.mean(0).clamp(min=self.lam).sum()
    '''))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(script), "fit", "--config", str(REPO / "configs" / "mnist_mlp.yaml"), "--model",
                           "my_vaes.FreeBitsVAE", "--model.lam", "0.25", "--print_config"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)["model"]
    assert printed["class_path"] == "my_vaes.FreeBitsVAE" and printed["init_args"]["lam"] == 0.25


def test_package_exports_the_registered_classes() -> None:
    """`from vaezoo import *` gives every name of __all__, and each exported variant, net and likelihood is the
    class the CLI builds by its registered name."""
    import vaezoo

    exported: dict = {}
    exec("from vaezoo import *", exported)  # noqa: S102 (the names load on first use: a missing one raises)
    assert set(exported) - {"__builtins__"} == set(vaezoo.__all__)
    builtin = [e for r in (VARIANTS, NETS, LIKELIHOODS) for e in r if e.class_path.startswith("vaezoo.")]
    assert {e.cls.__name__ for e in builtin} >= {"VAE", "BetaVAE", "IWAE", "MLPNet", "ConvNet", "Bernoulli"}
    for entry in builtin:
        assert exported[entry.cls.__name__] is entry.cls, entry.name
    for registry, name in ((VARIANTS, "register_variant"), (NETS, "register_net"), (DATASETS, "register_dataset"),
                           (LIKELIHOODS, "register_likelihood")):
        assert exported[name] == registry.register
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        vaezoo.Nope  # noqa: B018
