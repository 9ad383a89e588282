#!/usr/bin/env python3
"""Renders a chart with Helm's own engine (helm-python-sdk bundles Helm's Go SDK) for the
cross-check in tests/tests/helm_chart.rs: argv[1] is the chart directory, stdin a JSON object
{"values": {...}, "name": release, "namespace": ns}; stdout the JSON object
{template path: rendered manifest}. Exit 3 when the module is missing.
"""
import json
import sys

try:
    from helm_python.chart import Chart
except ImportError as e:
    print(f"missing python module: {e.name}", file=sys.stderr)
    sys.exit(3)

req = json.load(sys.stdin)
chart = Chart.load(sys.argv[1])
out = chart.render(req["values"], name=req["name"], namespace=req["namespace"], is_install=True)
json.dump(out, sys.stdout)
