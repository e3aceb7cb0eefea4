#!/bin/sh
# Coverage is not supported in the offline build; this stands in for the downloaded tool.
exit 0
