"""A real nginx running a site from docs/ (docs/nginx-production*.conf), rendered by
``cas.static.render_nginx_site``, in a work directory of its own, logging for every request
whether an upstream (``cas serve``) was asked."""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from cas.processes import stop_process

NGINX = Path("/usr/sbin/nginx")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Nginx:
    url: str
    workdir: Path
    proc: subprocess.Popen[bytes]

    def log_lines(self) -> list[str]:
        path = self.workdir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def upstream_of(self, request_uri: str) -> str:
        """The upstream of the last logged request for ``request_uri``: "-" when nginx answered
        by itself, else the address of the `cas serve` it asked.  nginx logs a request after
        its response has gone, so the line may come a moment after the client read it."""
        deadline = time.monotonic() + 3
        while True:
            for line in reversed(self.log_lines()):
                _method, uri, _status, upstream = line.split(" ", 3)
                if uri == request_uri:
                    return upstream
            if time.monotonic() > deadline:
                raise AssertionError(f"{request_uri} is not in nginx's access log")
            time.sleep(0.02)

    def stop(self) -> None:
        stop_process(self.proc)


def start_nginx(workdir: Path, site: str, port: int) -> Nginx:
    assert NGINX.exists(), "nginx is not installed: apt-get install nginx-light (.ci/run does)"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "site.conf").write_text(site)
    (workdir / "nginx.conf").write_text(f"""
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format deltacas '$request_method $request_uri $status $upstream_addr';
    access_log {workdir}/access.log deltacas;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {workdir}/site.conf;
}}
""")
    proc = subprocess.Popen([str(NGINX), "-p", str(workdir), "-c", str(workdir / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            log = (workdir / "error.log").read_text() if (workdir / "error.log").exists() else ""
            raise AssertionError(f"nginx exited: {err}{log}")
        try:
            httpx.get(url + "/nginx-started", timeout=1)
            return Nginx(url, workdir, proc)
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("nginx did not start")
