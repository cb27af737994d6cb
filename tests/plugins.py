"""Writes third-party plugin packages on the fly, as pip would install them (a module + dist-info)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_plugin(site: Path, dist: str, module: str, source: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """Write ``module.py`` and ``<dist>-0.1.dist-info`` with ``entry_points.txt`` into ``site``.

    Args:
        site: A folder to put on ``sys.path`` / ``PYTHONPATH``.
        dist: The distribution name, e.g. ``vaezoo-demo``.
        module: The importable module name.
        source: The module's Python source.
        entry_points: ``{group: {name: "module:attr"}}``.
    """
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return site


DEMO_VARIANT = """
    from vaezoo import VAE, register_variant


    @register_variant("halfkl")
    class HalfKLVAE(VAE):
        \"\"\"A plugin's variant: recon + KL / 2.\"\"\"

        def loss(self, out):
            return (out.recon + 0.5 * out.kl).mean()
"""
