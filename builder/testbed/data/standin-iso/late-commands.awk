# The autoinstall's `late-commands:` as subiquity runs them, one command a line, each argument single-quoted
# for sh. builder renders each command as a one-line JSON list of strings (`- ["sh", "-c", "..."]`); a JSON
# string (`- "..."`) is a shell command (sh -c). "?TEXT" when the stand-in cannot read an entry.
# busybox awk: no escaped brackets inside bracket expressions.
function q(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
# JSON string starting at position p of t (t[p] is the opening quote): sets S (its value) and P (after it)
function jstr(t, p,    c, out, e) {
  out = ""; p++
  while (p <= length(t)) {
    c = substr(t, p, 1)
    if (c == "\"") { S = out; P = p + 1; return 1 }
    if (c == "\\") {
      e = substr(t, p + 1, 1); p += 2
      if (e == "n") out = out "\n"; else if (e == "t") out = out "\t"
      else if (e == "\"" || e == "\\" || e == "/") out = out e
      else return 0
      continue
    }
    out = out c; p++
  }
  return 0
}
/^autoinstall:/ { ai = 1; next }
ai && /^[^ #]/ { exit }
ai && !inl && /^  late-commands:/ {
  rest = $0; sub(/^  late-commands:[ ]*/, "", rest)
  if (rest == "[]") exit
  if (rest != "") { print "?" rest; exit }
  inl = 1; next
}
inl && /^    - / {
  t = $0; sub(/^    - */, "", t); sub(/[ ]+$/, "", t)
  if (substr(t, 1, 1) == "\"") {
    if (!jstr(t, 1) || P <= length(t)) { print "?" t; next }
    print "sh -c " q(S); next
  }
  if (substr(t, 1, 1) != "[" || substr(t, length(t), 1) != "]") { print "?" t; next }
  line = ""; p = 2
  while (1) {
    while (substr(t, p, 1) == " ") p++
    c = substr(t, p, 1)
    if (c == "]") break
    if (c != "\"" || !jstr(t, p)) { line = "?" t; break }
    line = line (line == "" ? "" : " ") q(S); p = P
    while (substr(t, p, 1) == " ") p++
    if (substr(t, p, 1) == ",") p++
  }
  print line; next
}
inl && /^[ ]*(#.*)?$/ { next }
inl && /^     / { print "?a late-command spread over several lines"; next }
inl { exit }
