# The autoinstall's `packages:` (flow list on one line, or a block list), one name a line; "?TEXT" when
# the stand-in cannot read it. busybox awk: no escaped brackets inside bracket expressions.
/^autoinstall:/ { ai = 1; next }
ai && /^[^ #]/ { exit }
ai && !inp && /^  packages:/ {
  rest = $0; sub(/^  packages:[ ]*/, "", rest); sub(/[ ]+#.*$/, "", rest)
  if (rest ~ /^\[/) { gsub(/\[/, " ", rest); gsub(/\]/, " ", rest); gsub(/[",\047]/, " ", rest); n = split(rest, a, " "); for (i = 1; i <= n; i++) print a[i]; exit }
  if (rest != "") { print "?" rest; exit }
  inp = 1; next
}
inp && /^  *- / { v = $0; sub(/^  *- */, "", v); sub(/[ ]+#.*$/, "", v); gsub(/["\047]/, "", v); print v; next }
inp && /^[ ]*(#.*)?$/ { next }
inp { exit }
