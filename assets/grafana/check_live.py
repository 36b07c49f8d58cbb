"""Runs every dashboard query and every alert rule's selectors against a live Prometheus and
fails on any that returns nothing. Used by check-live.sh (which starts the server, the bots and
Prometheus); can also be pointed at any Prometheus:

    python3 check_live.py --prometheus http://127.0.0.1:9090 --dashboard zone-server.json \
        --rules ../prometheus/alerts.yml

Dashboards: each panel target's expr, with Grafana's variables substituted ($instance, $shard
and other multi-value variables -> ".*", $__rate_interval/$__interval -> 1m), must return at
least one series. Alert rules: a healthy server fires nothing, so the rule as a whole returns
nothing; instead every vector selector in the rule (metric name plus its label matchers) must
return at least one series, so a renamed metric or a label the server never sets is caught.
"""
import argparse
import json
import re
import sys
import urllib.parse
import urllib.request

import yaml

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan", "le",
}


def query(prom, expr):
    url = prom.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def substitute(expr, variables):
    expr = expr.replace("$__rate_interval", "1m").replace("${__rate_interval}", "1m")
    expr = expr.replace("$__interval", "1m").replace("${__interval}", "1m")
    for v in variables:
        expr = expr.replace("${" + v + "}", ".*").replace("$" + v, ".*")
    return expr


def panels(dash):
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:
            yield q


def selectors(expr):
    """The vector selectors of a PromQL expression: NAME or NAME{matchers}."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0).replace("(", "\x01").replace(")", "\x02"), expr)
    # Range durations ([5m], [1h:1m]) and grouping label lists are not selectors.
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", e):
        name, matchers = m.group(1), m.group(2) or ""
        after = e[m.end():].lstrip()
        before = e[: m.start()].rstrip()
        if name.lower() in PROMQL_WORDS or after.startswith("("):
            continue  # a function or a keyword
        if before.endswith("{") or before.endswith(","):
            continue  # a label name inside matchers (already skipped by the {...} group, defensive)
        out.append(name + matchers.replace("\x01", "(").replace("\x02", ")"))
    return sorted(set(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--dashboard", action="append", default=[])
    ap.add_argument("--rules", action="append", default=[])
    ap.add_argument(
        "--allow-empty",
        action="append",
        default=[],
        help="regex: a query matching it may return nothing (a series that only exists once its event happened, e.g. a 5xx); listed, not failed",
    )
    a = ap.parse_args()
    empty, checked, allowed = [], 0, []
    for path in a.dashboard:
        dash = json.load(open(path))
        variables = [v["name"] for v in dash.get("templating", {}).get("list", [])]
        for v in dash.get("templating", {}).get("list", []):
            q = v.get("definition") or (v.get("query") if isinstance(v.get("query"), str) else (v.get("query") or {}).get("query"))
            m = re.match(r"label_values\((.*),\s*([a-zA-Z_]+)\)$", q or "")
            if v.get("type") == "query" and m:
                checked += 1
                sel = substitute(m.group(1), variables)
                r = query(a.prometheus, sel)
                if not any(m.group(2) in s["metric"] for s in r):
                    empty.append(f"{path}: variable ${v['name']}: {q} has no values")
        for p in panels(dash):
            for t in p.get("targets", []) or []:
                if not t.get("expr"):
                    continue
                checked += 1
                expr = substitute(t["expr"], variables)
                r = query(a.prometheus, expr)
                if not r:
                    empty.append(f"{path}: panel {p.get('title')!r} ({t.get('refId', '?')}): {expr}")
    for path in a.rules:
        for g in yaml.safe_load(open(path))["groups"]:
            for rule in g["rules"]:
                for sel in selectors(rule["expr"]):
                    checked += 1
                    if not query(a.prometheus, sel):
                        empty.append(f"{path}: rule {rule.get('alert') or rule.get('record')}: selector {sel} matches no series")
    still = []
    for e in empty:
        (allowed if any(re.search(r, e) for r in a.allow_empty) else still).append(e)
    for e in allowed:
        print(f"empty (allowed: no such event in this run): {e}")
    empty = still
    if empty:
        print(f"FAIL: {len(empty)} of {checked} queries return nothing:", file=sys.stderr)
        for e in empty:
            print("  " + e, file=sys.stderr)
        sys.exit(1)
    print(f"ok   {checked - len(allowed)} of {checked} dashboard queries and alert selectors return data"
          + (f"; {len(allowed)} allowed empty (listed above)" if allowed else ""))


if __name__ == "__main__":
    main()
