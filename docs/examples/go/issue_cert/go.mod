module example.invalid/guardian/issue_cert

go 1.19

require github.com/miekg/pkcs11 v1.0.3

// Debian's golang-github-miekg-pkcs11-dev: the build needs no network and no
// module proxy (docs/vendor-interface.md, "Using the Guardian from C, Python
// and Go").  Elsewhere, drop this line and let `go mod tidy` fetch it.
replace github.com/miekg/pkcs11 => /usr/share/gocode/src/github.com/miekg/pkcs11
