"""The one shared image: content-hash tag, build and push through the docker SDK, the digest record.

    hirl image build [--repository R] [--base IMAGE] [--build-arg K=V ...]   # R:<content hash>
    hirl image push  [--repository R]                                        # → R@sha256:<digest>
    hirl image show  [--repository R]                                        # tag, built?, pushed digest

The tag is a hash of everything that goes into the image: the Dockerfile, the dependency pins
(pyproject.toml) and the source tree it copies, plus the build arguments that change its content
(not those that only say where pip downloads from; those are recorded in the image's history, so
credentials in them are refused). The build context is exactly those files, so
the hash and the image cannot disagree, and an unchanged tree reuses the tag without building.
``push`` records the registry digest in ``.hirl/images.json``; cluster backends pin
``<repository>@sha256:<digest>`` from there and refuse an image that was never pushed.
The engine is whatever ``DOCKER_HOST`` points at (Docker, or podman's Docker API socket).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from . import names
from .errors import ImageError

DOCKERFILE = "docker/Dockerfile"
# What the Dockerfile copies (tests check the two agree); nothing else is sent to the engine.
CONTEXT = ("pyproject.toml", "README.md", "hirl_core", "jobs", "configs")
SKIP = ("__pycache__", "*.pyc", "*.egg-info", ".DS_Store")
DEFAULT_REPOSITORY = "hirl"
# Build arguments that choose where pip downloads from, not what the image holds: not in the hash.
SOURCE_ONLY_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT")
LABEL_ARGS = ("REVISION",)        # the commit is a label; the same content under a new commit is the same image
ALLOWED_ARGS = ("BASE_IMAGE", "FAISS_PACKAGE", "VERSION", "SOURCE") + SOURCE_ONLY_ARGS + LABEL_ARGS
RECORD = Path(".hirl") / "images.json"
REPOSITORY = re.compile(r"(?:[a-z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
DIGEST_REF = re.compile(rf"@{DIGEST.pattern}$")   # an image reference pinned by digest


# -- what goes in, and its hash ------------------------------------------------------------------
def context_files(root="."):
    """(path in the context, file on disk) for every file the image gets, in a stable order."""
    root = Path(root)
    files = [("Dockerfile", root / DOCKERFILE)]
    for entry in CONTEXT:
        path = root / entry
        if path.is_file():
            files.append((entry, path))
            continue
        if not path.is_dir():
            raise ImageError(f"image context: {entry!r} is missing under {root.resolve()}")
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
            for name in sorted(filenames):
                if not _skipped(name):
                    full = Path(dirpath) / name
                    files.append((full.relative_to(root).as_posix(), full))
    return sorted(files)


def _skipped(name):
    return any(fnmatch.fnmatch(name, pattern) for pattern in SKIP)


def content_hash(root=".", build_args=None):
    """sha256 over the context (paths, executable bits, bytes) and the content-changing build args."""
    h = hashlib.sha256()
    for arcname, path in context_files(root):
        h.update(f"{arcname}\0{int(os.access(path, os.X_OK))}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    for key, value in sorted((build_args or {}).items()):
        if key not in SOURCE_ONLY_ARGS + LABEL_ARGS:
            h.update(f"arg\0{key}={value}\0".encode())
    return h.hexdigest()


def context_tar(root="."):
    """The build context as an in-memory tar; owners and times normalised (the hash ignores them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arcname, path in context_files(root):
            info = tarfile.TarInfo(arcname)
            data = path.read_bytes()
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def parse_build_args(pairs):
    args = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or key not in ALLOWED_ARGS:
            raise ImageError(f"bad --build-arg {pair!r}: expected KEY=VALUE with KEY one of {', '.join(ALLOWED_ARGS)}")
        if "\n" in value or "\0" in value:
            raise ImageError(f"bad --build-arg {key}: the value holds a newline or NUL")
        _refuse_credentials(key, value)
        args[key] = value
    if "BASE_IMAGE" in args:
        check_reference(args["BASE_IMAGE"], "--base")
    return args


# A URL's user[:password]@, or a query parameter that names a secret (pip takes several URLs, space-separated).
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]*@")
_SECRET_QUERY = re.compile(r"[?&](?:[a-z_-]*token|[a-z_-]*key|password|passwd|pass|secret|auth\w*|sig|signature)=",
                           re.I)


def _refuse_credentials(key, value):
    """The engine records build arguments that RUN steps use in the image's history and config, and
    the docker SDK has no build secrets: a credential in one would ship with every pushed image."""
    what = ("user:password@ in a URL" if _USERINFO.search(value) else
            "a secret query parameter" if _SECRET_QUERY.search(value) else "")
    if what:
        raise ImageError(f"build argument {key} carries credentials ({what}), and build arguments are recorded in "
                         f"the image's history: use an index that needs none, such as a mirror or an "
                         f"authenticating proxy on the build host (the value is not shown)")


def check_repository(repository):
    if not isinstance(repository, str) or not REPOSITORY.fullmatch(repository) or len(repository) > 200:
        raise ImageError(f"bad image repository {repository!r}: expected [registry[:port]/]name[/name] in "
                         f"lowercase letters, digits and . _ - (e.g. 127.0.0.1:5001/hirl), no tag")
    return repository


def check_reference(reference, what="image"):
    if not isinstance(reference, str) or not names.IMAGE_REF.fullmatch(reference):
        raise ImageError(f"bad {what} reference {reference!r}: expected [registry/]name[:tag][@sha256:digest]")
    return reference


# -- the record of pushed images -----------------------------------------------------------------
def read_record(root="."):
    path = Path(root) / RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"pushed": {}}
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: unreadable image record ({exc}); delete it and push again") from exc


def _write_record(record, root="."):
    path = Path(root) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def pinned_reference(image="", root="."):
    """``repo@sha256:…`` for a cluster job: an explicit digest as given, a tag (or nothing: the latest
    push) through the record. Raises ImageError for an image that was never pushed."""
    if image and DIGEST_REF.search(image):
        return image
    record = read_record(root)
    if not image:
        latest = record.get("latest")
        if not latest:
            raise ImageError("no image has been pushed yet: run `make push REGISTRY=<host:port>` (hirl image "
                             "push), or set `image: <repo>@sha256:<digest>` in the experiment")
        return record["pushed"][latest]["reference"]
    entry = record.get("pushed", {}).get(image)
    if not entry:
        raise ImageError(f"image {image!r} was never pushed by `hirl image push` (known: "
                         f"{', '.join(sorted(record.get('pushed', {}))) or 'none'}); push it, or give it "
                         f"pinned as <repo>@sha256:<digest>")
    return entry["reference"]


# -- the engine ----------------------------------------------------------------------------------
def _client():
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ImageError("the docker SDK is missing: pip install docker") from exc
    try:
        client = docker.from_env(timeout=3600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any connection failure is the same advice
        where = os.environ.get("DOCKER_HOST", "the default Docker socket")
        raise ImageError(f"no container engine answers at {where} ({type(exc).__name__}); start Docker, or "
                         f"podman's API socket and set DOCKER_HOST=unix://<socket>") from exc
    return client


def _exists(client, reference):
    import docker

    try:
        return client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None


def _git_revision(root="."):
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def build(repository=DEFAULT_REPOSITORY, build_args=None, root=".", out=sys.stdout, client=None):
    """Build ``repository:<hash>`` unless it exists; returns (reference, built_now)."""
    repository = check_repository(repository)
    args = dict(build_args or {})
    reference = f"{repository}:{content_hash(root, args)[:16]}"
    client = client or _client()
    if _exists(client, reference):
        print(f"image {reference} is up to date (no change since it was built)", file=out, flush=True)
        return reference, False
    args.setdefault("REVISION", _git_revision(root))
    print(f"building {reference} from {args.get('BASE_IMAGE', 'the Dockerfile default base')}", file=out, flush=True)
    started = time.time()
    stream = client.api.build(fileobj=context_tar(root), custom_context=True, dockerfile="Dockerfile",
                              tag=reference, buildargs=args, rm=True, forcerm=True, decode=True)
    for chunk in _with_heartbeat(stream, out, "building"):
        if "error" in chunk:
            raise ImageError(f"image build failed: {chunk['error'].strip()}")
        text = chunk.get("stream", "")
        if text.strip():
            print(text.rstrip("\n"), file=out, flush=True)
    if not _exists(client, reference):
        raise ImageError(f"image build ended without {reference}; see the log above")
    print(f"built {reference} in {time.time() - started:.0f} s", file=out, flush=True)
    return reference, True


def push(repository=DEFAULT_REPOSITORY, build_args=None, root=".", out=sys.stdout, client=None):
    """Push ``repository:<hash>`` (built before); record and return its ``repository@sha256:…``."""
    repository = check_repository(repository)
    if "/" not in repository:
        raise ImageError(f"cannot push {repository!r}: the repository needs a registry, e.g. "
                         f"127.0.0.1:5001/{repository} (--repository or REGISTRY=)")
    tag = content_hash(root, build_args)[:16]
    reference = f"{repository}:{tag}"
    client = client or _client()
    if not _exists(client, reference):
        raise ImageError(f"no image {reference} for the current source: build it first "
                         f"(hirl image build --repository {repository})")
    print(f"pushing {reference}", file=out, flush=True)
    digest, last = None, {}
    for chunk in _with_heartbeat(client.api.push(repository, tag=tag, stream=True, decode=True), out, "pushing"):
        if "error" in chunk:
            raise ImageError(f"image push failed: {chunk['error'].strip()}")
        digest = (chunk.get("aux") or {}).get("Digest") or digest
        status = chunk.get("status", "")
        digest = digest or _digest_in(status)
        layer = chunk.get("id", "")
        if status and (status, layer) != last:   # one line per layer and state, not per progress tick
            print(f"  {layer + ': ' if layer else ''}{status}", file=out, flush=True)
            last = (status, layer)
    digest = digest or _registry_digest(repository, tag)
    if not digest:
        raise ImageError(f"pushed {reference} but the registry reported no digest")
    pinned = f"{repository}@{digest}"
    record = read_record(root)
    record.setdefault("pushed", {})[reference] = {"reference": pinned, "digest": digest,
                                                  "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record["latest"] = reference
    _write_record(record, root)
    print(f"pushed {pinned}", file=out, flush=True)
    return pinned


def _with_heartbeat(stream, out, what, every=20.0):
    """The engine's stream, with a line every ``every`` s while it is silent (podman says nothing
    until a multi-GB layer is compressed and uploaded)."""
    import queue
    import threading

    chunks, done, started = queue.Queue(), object(), time.time()

    def pump():
        try:
            for chunk in stream:
                chunks.put(chunk)
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            chunks.put(exc)
        chunks.put(done)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            chunk = chunks.get(timeout=every)
        except queue.Empty:
            print(f"  … still {what} ({time.time() - started:.0f} s)", file=out, flush=True)
            continue
        if chunk is done:
            return
        if isinstance(chunk, Exception):
            raise chunk
        yield chunk


def _digest_in(text):
    m = DIGEST.search(text or "")
    return m.group(0) if m else None


def _registry_digest(repository, tag):
    """The manifest digest from the registry itself (Docker-Content-Digest), for engines whose push
    stream does not say it."""
    import urllib.request

    host, _, name = repository.partition("/")
    request = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.headers.get("Docker-Content-Digest")
    except OSError:
        return None


def show(repository=DEFAULT_REPOSITORY, build_args=None, root=".", out=sys.stdout):
    """What `hirl image build` would tag now, whether the engine has it, and the pushed digests."""
    repository = check_repository(repository)
    reference = f"{repository}:{content_hash(root, build_args)[:16]}"
    try:
        built = "yes" if _exists(_client(), reference) else "no"
    except ImageError as exc:
        built = f"unknown ({exc})"
    record = read_record(root)
    entry = record.get("pushed", {}).get(reference)
    print(f"current tag:  {reference}\nbuilt here:   {built}\npushed:       "
          f"{entry['reference'] if entry else 'no'}", file=out)
    if record.get("latest"):
        print(f"cluster jobs: {record['pushed'][record['latest']]['reference']} (the latest push)", file=out)
    return reference


# -- hirl image ... --------------------------------------------------------------------------------
def add_parser(sub):
    p = sub.add_parser("image", help="build, push or show the one shared image (docker SDK; DOCKER_HOST)")
    p.add_argument("action", choices=("build", "push", "show"))
    p.add_argument("--repository", default=os.environ.get("HIRL_IMAGE_REPOSITORY", DEFAULT_REPOSITORY),
                   help="image repository, with the registry for push (default $HIRL_IMAGE_REPOSITORY or hirl)")
    p.add_argument("--base", help="BASE_IMAGE build argument (default: the Dockerfile's PyTorch CUDA image)")
    p.add_argument("--build-arg", dest="build_args", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a build argument ({', '.join(ALLOWED_ARGS)}); repeatable")
    return p


def cmd_image(args):
    pairs = list(args.build_args) + ([f"BASE_IMAGE={args.base}"] if args.base else [])
    pairs = [p for p in os.environ.get("HIRL_IMAGE_BUILD_ARGS", "").split() if p] + pairs
    build_args = parse_build_args(pairs)
    if args.action == "build":
        build(args.repository, build_args)
    elif args.action == "push":
        push(args.repository, build_args)
    else:
        show(args.repository, build_args)
    return 0
