#!/usr/bin/env python3
"""Sums the GoogleTest results in bazel-testlogs into one closing line."""
import pathlib
import sys
import xml.etree.ElementTree as ET

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bazel-testlogs")
passed = failed = skipped = 0
for xml in root.glob("**/test.xml"):
    try:
        tree = ET.parse(xml)
    except ET.ParseError:
        failed += 1
        continue
    cases = tree.getroot().iter("testcase")
    found = False
    for case in cases:
        found = True
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.get("result") == "skipped" or case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    if not found:
        # A test binary that died before writing cases counts as one failure.
        failed += 1
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
