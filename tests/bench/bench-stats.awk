# bench-stats.awk — the awk functions the benchmark scripts' summaries share
# (service-bench.sh, stations-bench.sh): field(LINE, KEY), the value of KEY=
# in a result line; median(ARR, N) of ARR[1..N].  Prepended to
# each summary's program text (awk "$(cat bench-stats.awk)"'...').
function field(line, key,   i, n, kv) {
    n = split(line, kv, " ")
    for (i = 1; i <= n; i++) if (index(kv[i], key "=") == 1) return substr(kv[i], length(key) + 2)
    return ""
}
function median(arr, n,   i, j, t, s) {
    for (i = 1; i <= n; i++) s[i] = arr[i]
    for (i = 2; i <= n; i++) for (j = i; j > 1 && s[j - 1] > s[j]; j--) { t = s[j]; s[j] = s[j - 1]; s[j - 1] = t }
    return n % 2 ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
}
