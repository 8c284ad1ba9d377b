"""A real OCI artifact client for berth's tests: the ORAS Python SDK (oras on PyPI).

    oras_client.py push <registry host:port> <repo:tag> <kind: helm|flux> <workdir>
    oras_client.py pull <host:port> <repo:tag> <outdir>        -> prints the files pulled
    oras_client.py tags <host:port> <repo> [n]                 -> prints the tags, JSON

Plain HTTP (insecure): berth and the test registry listen on 127.0.0.1.
"""
import json
import os
import sys

import oras.client

HELM = ("application/vnd.cncf.helm.config.v1+json",
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip")
FLUX = ("application/vnd.cncf.flux.config.v1+json",
        "application/vnd.cncf.flux.content.v1.tar+gzip")


def client():
    return oras.client.OrasClient(insecure=True)


def push(host, reference, kind, workdir):
    config_type, layer_type = HELM if kind == "helm" else FLUX
    name = reference.split("/")[-1].replace(":", "-")
    os.chdir(workdir)
    layer = f"{name}.tgz"
    with open(layer, "wb") as f:
        f.write(os.urandom(64 * 1024) + name.encode())
    config = f"{name}.config.json"
    with open(config, "w") as f:
        json.dump({"name": name, "kind": kind} if kind == "helm" else {}, f)
    annotations = {"org.opencontainers.image.revision": "main@sha1:0123abcd"} if kind == "flux" else None
    r = client().push(target=f"{host}/{reference}", files=[f"{layer}:{layer_type}"],
                      manifest_config=f"{config}:{config_type}", manifest_annotations=annotations)
    assert r.status_code == 201, r.status_code
    print(os.path.join(workdir, layer))


def pull(host, reference, outdir):
    for path in client().pull(target=f"{host}/{reference}", outdir=outdir):
        print(path)


def tags(host, repo, n=None):
    print(json.dumps(client().get_tags(f"{host}/{repo}", N=int(n) if n else None)))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"push": push, "pull": pull, "tags": tags}[command](*args)
