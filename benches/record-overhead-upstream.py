# A local upstream for benches/record-overhead.sh: one OCI manifest at any /v2/ path.
import hashlib, http.server, json, sys
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a"*64, "size": 2},
  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "b"*64, "size": 3}]}).encode()
digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Docker-Content-Digest", digest)
        self.send_header("Content-Length", str(len(manifest)))
        self.end_headers()
        if body: self.wfile.write(manifest)
    def do_GET(self): self.send(True)
    def do_HEAD(self): self.send(False)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
