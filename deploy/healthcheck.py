"""Container health check: exit 0 when /v2/health/ready answers 200 (HTTP, or HTTPS when the
server has a certificate; the check runs inside the container, so the name is not verified)."""

import ssl
import sys
import urllib.request

PORT = sys.argv[1] if len(sys.argv) > 1 else "8000"


def ready(scheme: str) -> bool:
    context = ssl._create_unverified_context() if scheme == "https" else None
    url = f"{scheme}://127.0.0.1:{PORT}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as answer:
            return answer.status == 200
    except OSError:
        return False


sys.exit(0 if ready("http") or ready("https") else 1)
