# storage.awk: the `storage: config:` actions of an autoinstall user-data, one shell line each.
#
# Part of the STAND-IN installer (busybox awk, no YAML library). It reads the block YAML that
# builder's own dumper writes (one list item per action, `key: value` lines, a nested or flow-style
# `match:` mapping) and prints, per action, shell assignments for `eval`:
#   k_type='disk' k_id='disk-os' k_match_serial='*_S6PN...' k_match_keys=' serial' ...
# Keys become k_<key> (non-alphanumerics -> _), match sub-keys k_match_<key>; k_match_keys lists
# the match keys seen and k_match_list=1 marks a list of match directives (not implemented).
# Anything it cannot read is printed as `k_unreadable='<line>'` so the caller fails loudly.

function indent(s) { return match(s, /[^ ]/) - 1 }

function unquote(v) {
    sub(/^[ ]+/, "", v); sub(/[ ]+$/, "", v)
    if (v ~ /^'.*'$/) { v = substr(v, 2, length(v) - 2); gsub(/''/, "'", v) }
    else if (v ~ /^".*"$/) { v = substr(v, 2, length(v) - 2); gsub(/\\"/, "\"", v); gsub(/\\\\/, "\\", v) }
    return v
}

function shq(v) { gsub(/'/, "'\\''", v); return "'" v "'" }

function var(k) { gsub(/[^A-Za-z0-9]/, "_", k); return k }

function put(k, v) { out = out " k_" var(k) "=" shq(unquote(v)) }

function putmatch(k, v) { put("match_" k, v); mkeys = mkeys " " k }

function flush() {
    if (out != "") print out " k_match_keys=" shq(mkeys)
    out = ""; mkeys = ""; inmatch = 0
}

# key: value  ->  sets K and V; returns 0 when the line is not a mapping entry
function kv(s) {
    sub(/^[ ]+/, "", s)
    if (!match(s, /^[A-Za-z0-9_.-]+:( |$)/)) return 0
    K = substr(s, 1, RLENGTH); sub(/:.*/, "", K)
    V = substr(s, RLENGTH + 1)
    return 1
}

function flowmatch(v,    n, i, parts) {
    v = substr(v, 2, length(v) - 2)
    n = split(v, parts, ",")
    for (i = 1; i <= n; i++) {
        if (kv(parts[i])) putmatch(K, V)
        else if (parts[i] !~ /^[ ]*$/) put("unreadable", parts[i])
    }
}

BEGIN { state = 0; out = ""; mkeys = "" }
/^[ ]*(#.*)?$/ { next }
{
    ind = indent($0)
    line = $0
    sub(/^[ ]+/, "", line)
    if (state == 0) {
        if (line ~ /^storage:[ ]*$/) { state = 1; sind = ind }
        next
    }
    if (ind <= sind) { flush(); state = 0; if (line ~ /^storage:[ ]*$/) { state = 1; sind = ind }; next }
    if (state == 1) {
        if (line ~ /^config:[ ]*$/) { state = 2; cind = ind }
        next
    }
    # state 2: inside config
    if (ind <= cind && line !~ /^- /) { flush(); state = 1; if (line ~ /^config:/) { state = 2; cind = ind }; next }
    if (line ~ /^- /) {
        flush()
        iind = ind + 2
        line = substr(line, 3)
        ind = iind
    }
    if (inmatch && ind > iind) {
        if (line ~ /^- /) { put("match_list", "1"); next }
        if (kv(line)) putmatch(K, V); else put("unreadable", line)
        next
    }
    inmatch = 0
    if (!kv(line)) { put("unreadable", line); next }
    if (K == "match") {
        v = V; sub(/^[ ]+/, "", v); sub(/[ ]+$/, "", v)
        if (v == "") inmatch = 1
        else if (v ~ /^\{.*\}$/) flowmatch(v)
        else put("unreadable", line)
        put("has_match", "1")
        next
    }
    put(K, V)
}
END { flush() }
