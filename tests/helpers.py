"""Helpers shared by several test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image as PILImage

PORTRAITS = Path(__file__).resolve().parent.parent / "datasets" / "portraits"


def camera_jpeg() -> bytes:
    """A bundled portrait re-saved as a camera would: a ~6 KB EXIF block before the image data."""
    with PILImage.open(PORTRAITS / "A13_flickr_ccby_05.jpg") as im:
        exif = im.getexif()
        exif[0x010F], exif[0x0110], exif[0x010E] = "Camera maker", "Camera model", "x" * 6000
        buf = io.BytesIO()
        im.save(buf, "JPEG", exif=exif, quality=90)
    return buf.getvalue()


def chromium() -> str | None:
    """Debian's headless Chromium, if installed (.ci/run installs it)."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: Path, shot: Path) -> dict:
    """Load ``page`` in headless Chromium: its self-check (images, broken images, script errors,
    read from the DOM after load), the console errors Chromium logged, and a screenshot."""
    import re
    import subprocess

    exe = chromium()
    assert exe is not None, "chromium is required here (TUNER_REQUIRE_BROWSER) but not installed"
    flags = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1600"]
    dom = subprocess.run([*flags, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    check = re.search(r'id="selfcheck" data-done="(\d)" data-images="(\d+)" data-broken="(\d+)" data-errors="(\d+)"',
                      dom.stdout)
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln and ("Uncaught" in ln or "ERROR" in ln)]
    subprocess.run([*flags, f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, timeout=120)
    return {"selfcheck": None if check is None else tuple(int(g) for g in check.groups()), "console_errors": console,
            "screenshot": shot}


# ---------------------------------------------------------------- PostgreSQL (scale-out tests)
PG_SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres"


class PgServer:
    """A throw-away PostgreSQL server started by ``.ci/postgres`` (or the one CI started and
    exported as TUNER_TEST_PG_URL / TUNER_TEST_PGDATA); ``database()`` makes a fresh database."""

    def __init__(self, url: str, folder: Path | None, owned: bool) -> None:
        self.url, self.folder, self.owned = url, folder, owned

    @classmethod
    def start(cls) -> PgServer:
        import subprocess
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="tuner-pg-", dir="/tmp"))  # the server's user must reach it
        r = subprocess.run([str(PG_SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f".ci/postgres start failed ({r.returncode}): {r.stderr.strip()}")
        return cls(r.stdout.strip(), folder, owned=True)

    def database(self, name: str) -> str:
        import sqlalchemy as sa

        eng = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        eng.dispose()
        return self.url.rsplit("/", 1)[0] + "/" + name

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (fast: clients are disconnected), wait ``down_s``, start it again."""
        import subprocess
        import time

        assert self.folder is not None, "restart needs the server's data folder (TUNER_TEST_PGDATA)"
        if down_s:
            subprocess.run([str(PG_SCRIPT), "halt", str(self.folder)], check=True, timeout=120)
            time.sleep(down_s)
            subprocess.run([str(PG_SCRIPT), "resume", str(self.folder)], check=True, timeout=120)
        else:
            subprocess.run([str(PG_SCRIPT), "restart", str(self.folder)], check=True, timeout=120)

    def stop(self) -> None:
        import subprocess

        if self.owned and self.folder is not None:
            subprocess.run([str(PG_SCRIPT), "stop", str(self.folder)], timeout=120)
