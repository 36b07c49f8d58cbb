"""Checks the Dockerfile without a container engine (there is none in CI): run by
.ci/dockerfile-check.sh.

- it parses (dockerfile-parse, the parser behind atomic-reactor/OSBS), with a build stage and a
  run stage;
- every cargo command it runs is one of the README's commands, verbatim, and uses --locked;
- the binaries the run stage copies are the ones that command builds (--bin), and exist as
  [[bin]] targets or src/bin files in the workspace;
- the run stage is a slim base, runs as a non-root USER, and copies only from the build stage
  (the binaries) and assets/ (the zone files); it runs no cargo;
- every path it COPYs from the context exists and is not excluded by .dockerignore;
- the Rust image's version is the workspace's rust-version; .dockerignore keeps target/ and .git
  out of the context.
"""
import fnmatch
import os
import re
import shlex
import sys

from dockerfile_parse import DockerfileParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
errors = []


def fail(msg):
    errors.append(msg)


def main():
    dfp = DockerfileParser(path=os.path.join(ROOT, "Dockerfile"))
    instr = dfp.structure
    if not instr:
        fail("the Dockerfile has no instructions")
        return
    # Split into stages.
    stages = []
    for i in instr:
        if i["instruction"] == "FROM":
            stages.append({"from": i["value"], "lines": []})
        elif not stages:
            if i["instruction"] not in ("ARG", "COMMENT"):
                fail(f"line {i['startline'] + 1}: {i['instruction']} before the first FROM")
        else:
            stages[-1]["lines"].append(i)
    if len(stages) < 2:
        fail(f"expected a multi-stage build (build + run), found {len(stages)} stage(s)")
        return
    names = {}
    for s in stages:
        m = re.match(r"^(\S+)(?:\s+AS\s+(\S+))?$", s["from"], re.I)
        if not m:
            fail(f"cannot read FROM {s['from']!r}")
            return
        s["image"], s["name"] = m.group(1), m.group(2)
        if s["name"]:
            names[s["name"]] = s
    build, run = stages[0], stages[-1]

    readme = open(os.path.join(ROOT, "README.md")).read()
    readme_cmds = {" ".join(l.strip().split()) for l in readme.splitlines() if l.strip().startswith("cargo ")}

    # The build stage's cargo commands.
    built_bins = set()
    cargo_cmds = []
    for i in build["lines"]:
        if i["instruction"] != "RUN":
            continue
        # Drop RUN flags (--mount=...), then split on && into commands.
        value = re.sub(r"^(--\S+\s+)+", "", i["value"].strip())
        for cmd in re.split(r"&&|;", value):
            words = shlex.split(cmd)
            if words and words[0] == "cargo":
                cargo_cmds.append(" ".join(words))
    if not cargo_cmds:
        fail("the build stage runs no cargo command")
    for c in cargo_cmds:
        if c not in readme_cmds:
            fail(f"the build stage runs `{c}`, which is not a README.md command (README has: {sorted(readme_cmds)})")
        if "--locked" not in c.split():
            fail(f"`{c}` does not use --locked (the image must build with Cargo.lock's versions)")
        w = c.split()
        built_bins |= {w[k + 1] for k, x in enumerate(w) if x == "--bin" and k + 1 < len(w)}
    if not built_bins:
        fail("the cargo build names no --bin: build exactly the binaries the image ships")

    # The workspace's binaries.
    ws_bins = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "vendor")]
        if "Cargo.toml" in filenames:
            text = open(os.path.join(dirpath, "Cargo.toml")).read()
            ws_bins |= set(re.findall(r'\[\[bin\]\]\s*\nname\s*=\s*"([^"]+)"', text))
            bindir = os.path.join(dirpath, "src", "bin")
            if os.path.isdir(bindir):
                ws_bins |= {f[:-3] for f in os.listdir(bindir) if f.endswith(".rs")}
    for b in sorted(built_bins - ws_bins):
        fail(f"cargo build --bin {b}: no such binary in the workspace (have {sorted(ws_bins)})")

    # The run stage.
    if not re.search(r"(slim|distroless|alpine|scratch)", run["image"]):
        fail(f"the run stage's base {run['image']} is not a slim image")
    user = None
    for i in run["lines"]:
        ins, val = i["instruction"], i["value"]
        if ins == "USER":
            user = val.split(":")[0]
        if ins == "RUN" and re.search(r"\bcargo\b", val):
            fail(f"line {i['startline'] + 1}: the run stage runs cargo")
        if ins in ("COPY", "ADD"):
            if ins == "ADD":
                fail(f"line {i['startline'] + 1}: use COPY, not ADD")
            words = shlex.split(val)
            frm = [w for w in words if w.startswith("--from=")]
            srcs = [w for w in words if not w.startswith("--")][:-1]
            if frm:
                stage = frm[0].split("=", 1)[1]
                if stage not in names or names[stage] is not build:
                    fail(f"line {i['startline'] + 1}: copies from {stage}, not from the build stage")
                shipped = {os.path.basename(s) for s in srcs}
                for b in sorted(shipped - built_bins):
                    fail(f"line {i['startline'] + 1}: ships {b}, which the cargo build does not build")
            else:
                for s in srcs:
                    if not (s == "assets" or s.startswith("assets/")):
                        fail(f"line {i['startline'] + 1}: the run stage copies {s} from the context (only assets/ belong in the image)")
    if user is None:
        fail("the run stage sets no USER: it would run as root")
    elif user in ("root", "0"):
        fail(f"the run stage runs as {user}")

    # COPY sources exist and are not ignored.
    ignore_path = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(ignore_path):
        fail(".dockerignore is missing")
        ignores = []
    else:
        ignores = [l.strip() for l in open(ignore_path) if l.strip() and not l.startswith("#")]
        for must in ("target", ".git"):
            if must not in ignores:
                fail(f".dockerignore does not exclude {must}")

    def ignored(p):
        p = p.rstrip("/")
        return any(fnmatch.fnmatch(p, pat) or p.startswith(pat.rstrip("/") + "/") for pat in ignores)

    for st in stages:
        for i in st["lines"]:
            if i["instruction"] != "COPY" or "--from=" in i["value"]:
                continue
            srcs = [w for w in shlex.split(i["value"]) if not w.startswith("--")][:-1]
            for s in srcs:
                if s == ".":
                    for need in ("Cargo.toml", "Cargo.lock"):
                        if ignored(need):
                            fail(f".dockerignore excludes {need}, which the build needs")
                    continue
                if not os.path.exists(os.path.join(ROOT, s)):
                    fail(f"line {i['startline'] + 1}: COPY {s}: no such path in the repository")
                elif ignored(s):
                    fail(f"line {i['startline'] + 1}: COPY {s}: excluded by .dockerignore")

    # The toolchain.
    ws = open(os.path.join(ROOT, "Cargo.toml")).read()
    m = re.search(r'rust-version\s*=\s*"([^"]+)"', ws)
    tag = build["image"].split(":", 1)[1] if ":" in build["image"] else ""
    if m and not tag.startswith(m.group(1)):
        fail(f"the build image {build['image']} is not Rust {m.group(1)} (the workspace's rust-version)")

    print(f"Dockerfile: {len(stages)} stages ({build['image']} -> {run['image']}), user {user}, "
          f"cargo: {cargo_cmds}, ships {sorted(built_bins)}")


if __name__ == "__main__":
    main()
    if errors:
        for e in errors:
            print("FAIL: " + e, file=sys.stderr)
        sys.exit(1)
    print("ok   the Dockerfile parses, builds with --locked and the README's command, runs as non-root")
