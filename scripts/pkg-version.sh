#!/bin/sh
# Prints the package version for a git describe version ($1): packages
# want a leading digit and no '-' (rpm). 1.2.3 stays; 1.2.3-4-gabc1234
# (4 commits after v1.2.3) becomes 1.2.3+4.gabc1234; before the first tag,
# abc1234 becomes 0.0.0~git.N.abc1234 with N the number of commits, so a
# newer build has the higher version.
v=${1#v}
case "$v" in
[0-9]*.[0-9]*) echo "$v" | sed 's/-/+/; s/-/./g' ;;
*) echo "0.0.0~git.$(git rev-list --count HEAD 2>/dev/null || echo 0).$v" | sed 's/-/./g' ;;
esac
