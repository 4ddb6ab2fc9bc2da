"""The documentation site: it builds with warnings as errors, and a real browser renders it.

The site is built with ``mkdocs build --strict`` (or taken from ``$RB_DOCS_SITE``, already built
that way by ``.ci/docs.sh``), served from 127.0.0.1 by a thread of this process, and opened in
headless Chromium (Debian's ``/usr/bin/chromium``):

- screenshots of the home page, an API page and a tutorial page are not blank (grey-level
  spread) and show the theme (the header bar has the theme's indigo);
- on every tutorial page every ``<img>`` is a file of the built site and has loaded in the
  browser (``naturalWidth > 0``, read by a same-origin page that loads the tutorial in an iframe);
- every name of ``reparam_bridge.__all__`` and of each public submodule's ``__all__`` has its
  entry (anchor) on the API pages.

Marked ``docs``: without mkdocs or chromium the tests are skipped, unless ``RB_DOCS_REQUIRED=1``
(``.ci/docs.sh`` sets it), where anything missing fails. Screenshots go to
``$RB_DOCS_SCREENSHOTS`` when set (to look at them), else to a temporary folder.
Cost: ~10-30 s for the build, ~2-4 s per browser run.

The committed tutorial figures are checked without a browser (not marked): each tutorial's
figures are in ``docs/tutorials/figures/`` and shown on its page.
"""

import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from test_tutorials import EXPECTED  # the figures each tutorial writes

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
REQUIRED = os.environ.get("RB_DOCS_REQUIRED") == "1"
TUTORIAL_PAGES = {  # script -> page source under docs/
    "01_power_law_map_then_nuts.py": "tutorials/01_power_law.md",
    "02_eight_schools_geometry.py": "tutorials/02_eight_schools.md",
    "03_numpyro_random_module.py": "tutorials/03_numpyro.md",
    "04_custom_bijector.py": "tutorials/04_custom_bijector.md",
}
INDIGO = (63, 81, 181)  # mkdocs-material's "indigo" primary colour, the header bar


# -- without a browser ----------------------------------------------------------------------------
def test_every_tutorial_has_a_page_with_its_figures():
    assert sorted(TUTORIAL_PAGES) == sorted(EXPECTED), "a tutorial was added or renamed: give it a page"
    for script, page in TUTORIAL_PAGES.items():
        text = (DOCS / page).read_text()
        assert f'--8<-- "tutorials/{script}"' in text, f"{page} does not show the source of {script}"
        for name in EXPECTED[script]:
            png = DOCS / "tutorials" / "figures" / name
            assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (
                f"{png.relative_to(REPO)} is missing: run `python tutorials/{script} --out docs/tutorials/figures`")
            assert f"(figures/{name})" in text, f"{page} does not show {name}"


# -- the built site in a browser ------------------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> list[str]:
    missing = []
    for module, what in [("mkdocs", "mkdocs"), ("material", "mkdocs-material"),
                         ("mkdocstrings_handlers.python", "mkdocstrings[python]"), ("PIL", "pillow")]:
        try:
            __import__(module)
        except ImportError:
            missing.append(what)
    if missing:
        missing = [f"{', '.join(missing)} (python -m pip install -e '.[docs]')"]
    if _chromium() is None:
        missing.append("chromium (apt-get install -y chromium)")
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = _missing()
    if missing:
        (pytest.fail if REQUIRED else pytest.skip)("the docs check needs " + "; ".join(missing))
    if os.environ.get("RB_DOCS_SITE"):
        path = Path(os.environ["RB_DOCS_SITE"])
        assert (path / "index.html").exists(), f"RB_DOCS_SITE={path} holds no built site"
        return path
    path = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return path


IMGCHECK = """<!doctype html><html><head><meta charset="utf-8"><title>imgcheck</title></head><body>
<pre id="result">pending</pre>
<iframe id="page" src="{src}" style="width:1280px;height:3000px"></iframe>
<script>
// The iframe's load event fires once the page and all its images have loaded (or failed).
document.getElementById("page").addEventListener("load", function () {{
  var doc = this.contentDocument;
  var imgs = Array.prototype.map.call(doc.images, function (i) {{
    return {{src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}};
  }});
  var h1 = doc.querySelector("h1");
  document.getElementById("result").textContent =
      JSON.stringify({{title: doc.title, h1: h1 ? h1.textContent : null, images: imgs}});
}});
</script></body></html>"""


class _Handler(SimpleHTTPRequestHandler):
    """Serves the built site, plus ``/__imgcheck?page=/path/`` (the image check page)."""

    def do_GET(self):  # noqa: N802 - the http.server API
        url = urlparse(self.path)
        if url.path == "/__imgcheck":
            body = IMGCHECK.format(src=html.escape(parse_qs(url.query)["page"][0])).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def server(site):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("RB_DOCS_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _chrome(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.docs
@pytest.mark.parametrize("name, path", [
    ("home", "/"),
    ("api_bijectors", "/api/bijectors/"),
    ("tutorial_eight_schools", "/tutorials/02_eight_schools/"),
])
def test_screenshot_is_not_blank(name, path, server, shots, tmp_path):
    from PIL import Image, ImageStat

    png = shots / f"{name}.png"
    png.unlink(missing_ok=True)
    _chrome([f"--screenshot={png}", "--window-size=1280,1600", server + path], tmp_path / "profile")
    assert png.exists(), f"chromium wrote no screenshot of {path}"
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 1600)
    grey = ImageStat.Stat(image.convert("L"))
    colours = len(image.getcolors(maxcolors=1 << 20) or [])
    assert grey.stddev[0] > 15 and colours > 200, (
        f"{path} looks blank: grey-level sd {grey.stddev[0]:.1f}, {colours} colours ({png})")
    header = image.getpixel((640, 20))  # the header bar, away from the logo and the search box
    assert all(abs(a - b) <= 12 for a, b in zip(header, INDIGO)), (
        f"{path}: header pixel {header}, expected the theme's indigo {INDIGO}: was the CSS served? ({png})")


def _img_check(server: str, page: str, profile: Path) -> dict:
    proc = _chrome(["--dump-dom", f"{server}/__imgcheck?page={page}"], profile)
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert match and match.group(1) != "pending", f"the image check of {page} did not finish:\n{proc.stdout[:2000]}"
    return json.loads(html.unescape(match.group(1)))


@pytest.mark.docs
@pytest.mark.parametrize("script", sorted(TUTORIAL_PAGES))
def test_tutorial_figures_load_in_the_browser(script, site, server, tmp_path):
    page = "/" + TUTORIAL_PAGES[script].removesuffix(".md") + "/"
    result = _img_check(server, page, tmp_path / "profile")
    assert result["h1"] and "404" not in result["title"], result
    shown = {Path(img["src"]).name: img for img in result["images"] if "figures/" in img["src"]}
    assert sorted(shown) == sorted(EXPECTED[script]), f"{page} shows {sorted(shown)}"
    for name, img in shown.items():
        assert (site / page.strip("/") / img["src"]).resolve().is_file(), f"{page}: {img['src']} is not in the site"
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, f"{page}: {name} did not load: {img}"


@pytest.mark.docs
def test_every_public_name_has_an_api_entry(site):
    """The names are read at run time (the imported package), the pages were generated by static
    analysis: the two must agree."""
    import types

    import reparam_bridge as rb

    api = "".join(p.read_text() for p in (site / "api").rglob("index.html"))
    assert len(rb.__all__) > 30
    missing = []
    for name in rb.__all__:
        obj = getattr(rb, name)
        if isinstance(obj, types.ModuleType):  # a submodule: its page, and each of its names
            assert (site / "api" / name / "index.html").exists(), f"no API page for rb.{name}"
            missing += [f"{name}.{n}" for n in getattr(obj, "__all__", [])
                        if f'id="reparam_bridge.{name}.{n}"' not in api]
        elif f'id="reparam_bridge.{name}"' not in api:
            missing.append(name)
    assert not missing, f"public names without an API entry: {missing}"
