"""Rebuild offline.html: DVC's plots page template with Vega, Vega-Lite and Vega-Embed inlined, so
that `dvc plots show` / `dvc plots diff` render without network (.dvc/config: plots.html_template).

    cd plots/vendor && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 && python build.py

The versions are those DVC's own page loads from a CDN (dvc_render.vega.VegaRenderer.SCRIPTS);
each tarball's SHA-256 must match PINNED. The licences (BSD-3-Clause) are copied beside.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINNED = {  # package: (version, sha256 of the npm tarball, minified build inside it)
    "vega": ("5.20.2", "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d", "build/vega.min.js"),
    "vega-lite": (
        "5.2.0",
        "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b",
        "build/vega-lite.min.js",
    ),
    "vega-embed": (
        "6.18.2",
        "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b",
        "build/vega-embed.min.js",
    ),
}
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts_inline}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main() -> None:
    scripts = []
    for name, (version, digest, member) in PINNED.items():
        tarball = HERE / f"{name}-{version}.tgz"
        data = tarball.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            sys.exit(f"{tarball}: SHA-256 differs from the pinned one")
        with tarfile.open(tarball) as tar:
            code = tar.extractfile(f"package/{member}").read().decode("utf-8")
            licence = tar.extractfile("package/LICENSE").read()
        if "</script" in code.lower():
            sys.exit(f"{name}: the code holds '</script' and cannot be inlined")
        (HERE / f"LICENSE-{name}").write_bytes(licence)
        scripts.append(
            f"    <!-- {name}@{version} (npm, sha256 {digest}; BSD-3-Clause, see LICENSE-{name}) -->\n"
            f"    <script>{code}</script>"
        )
    page = PAGE.replace("{{", "{").replace("}}", "}").replace("{scripts_inline}", "\n".join(scripts))
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):  # DVC replaces these anywhere in the page
        if page.count(placeholder) != (0 if placeholder == "{scripts}" else 1):
            sys.exit(f"offline.html would hold {placeholder} {page.count(placeholder)} times")
    (HERE / "offline.html").write_text(page, encoding="utf-8")
    print(f"wrote {HERE / 'offline.html'} ({len(page) // 1024} KiB)")


if __name__ == "__main__":
    main()
