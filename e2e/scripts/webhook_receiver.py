#!/usr/bin/env python3
"""A webhook receiver for the e2e tests that checks every delivery with an
independent implementation of the Standard Webhooks signature (the
`standardwebhooks` package from PyPI), then records it as one JSON line:
{"path", "webhook_id", "body"} when valid, {"path", "bad": reason} when not
(and answers 400). Listens on 127.0.0.1 only; stops when its parent kills it.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError:
    print("standardwebhooks is not installed (scripts/install-test-tools.sh installs it)", file=sys.stderr)
    sys.exit(3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    verifier = Webhook(args.secret)
    out = open(args.out, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
            headers = {k: v for k, v in self.headers.items()}
            try:
                verifier.verify(body, headers, json_parse=False)
            except (WebhookVerificationError, ValueError) as e:
                out.write(json.dumps({"path": self.path, "bad": str(e)}) + "\n")
                self.send_response(400)
                self.end_headers()
                return
            out.write(json.dumps({
                "path": self.path,
                "webhook_id": headers.get("webhook-id") or headers.get("Webhook-Id"),
                "body": json.loads(body),
            }) + "\n")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
