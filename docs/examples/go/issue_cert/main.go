// issue_cert — the Guardian's production-line operations from Go
// (github.com/miekg/pkcs11: Debian's golang-github-miekg-pkcs11-dev), through
// standard PKCS#11 calls only: every Guardian operation is a C_CreateObject of
// a CKO_GUARDIAN_REQUEST, and the counters are attributes of the product's
// CKO_GUARDIAN_PACKAGE object.  No vendor mechanism is used, so this works
// through p11-kit's RPC (p11-kit-client.so) exactly as on guardian-pkcs11.so.
//
//	issue_cert MODULE TOKEN import PACKAGE.gpk
//	issue_cert MODULE TOKEN issue PRODUCT DEVICE_ID DEVICE_SPKI.der OUT.der
//	issue_cert MODULE TOKEN remaining OEM/PRODUCT
//	issue_cert MODULE TOKEN audit OUT [OEM/PRODUCT]
//
// PRODUCT is OEM/PRODUCT (the product's current release) or a package ID, 32
// hex digits.  The user PIN is read from GUARDIAN_PIN ("NAME:SECRET" in the
// service mode).  Exit status: 0 done, 1 refused (the CKR name is printed),
// 2 usage.
//
// Build offline with Debian's packages (golang-go, golang-github-miekg-pkcs11-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o issue_cert .
package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// The vendor constants (include/guardian/guardian-pkcs11.h): every Guardian
// value is <kind>_VENDOR_DEFINED | 0x47440000 | n.
const (
	gd                            = 0x47440000
	CKO_GUARDIAN_PACKAGE          = pkcs11.CKO_VENDOR_DEFINED | gd | 0x0001
	CKO_GUARDIAN_REQUEST          = pkcs11.CKO_VENDOR_DEFINED | gd | 0x0002
	CKA_GUARDIAN_OEM_ID           = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0001 // UTF-8 bytes
	CKA_GUARDIAN_PRODUCT_ID       = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0002 // UTF-8 bytes
	CKA_GUARDIAN_RELEASE          = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0003 // CK_ULONG
	CKA_GUARDIAN_AUTHORISED_UNITS = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0004 // CK_ULONG
	CKA_GUARDIAN_ISSUED_UNITS     = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0005 // CK_ULONG
	CKA_GUARDIAN_REMAINING_UNITS  = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0006 // CK_ULONG
	CKA_GUARDIAN_PACKAGE_ID       = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0008 // 16 bytes
	CKA_GUARDIAN_REQUEST          = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0010 // CK_ULONG
	CKA_GUARDIAN_DEVICE_ID        = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0013 // bytes
	CKA_GUARDIAN_DEVICE_SPKI      = pkcs11.CKA_VENDOR_DEFINED | gd | 0x0015 // DER
	CKG_GUARDIAN_REQ_AUDIT_EXPORT = 2
	CKG_GUARDIAN_REQ_IMPORT       = 7
	CKG_GUARDIAN_REQ_DEVICE_CERT  = 8
	CKR_GUARDIAN_PRODUCT_UNKNOWN  = pkcs11.CKR_VENDOR_DEFINED | gd | 0x0021
)

var guardianErrors = map[uint]string{
	0x01: "CONFIG_INVALID", 0x02: "BACKEND_LOAD_FAILED", 0x03: "BACKEND_IS_SELF",
	0x11: "PACKAGE_SIGNATURE_INVALID", 0x12: "WRONG_GUARDIAN", 0x13: "UNTRUSTED_SIGNER",
	0x14: "PACKAGE_EXPIRED", 0x15: "PACKAGE_REPLAYED", 0x16: "PACKAGE_ROLLBACK", 0x17: "OEM_NOT_ENROLLED",
	0x20: "QUOTA_EXHAUSTED", 0x21: "PRODUCT_UNKNOWN", 0x22: "DEVICE_KEY_INVALID",
	0x23: "DEVICE_KEY_UNSUPPORTED", 0x24: "DEVICE_KEY_IS_CA_KEY", 0x25: "DEVICE_ID_INVALID",
	0x26: "NOT_PRODUCTION_CA_KEY", 0x27: "PACKAGE_SUPERSEDED", 0x30: "STORE_FAILED", 0x31: "AUDIT_CORRUPT",
	0x32: "STATE_ROLLBACK", 0x33: "CLOCK_BEHIND", 0x34: "STATE_UNSAFE", 0x40: "REQUEST_INVALID",
	0x41: "ROOT_NOT_CA",
}

// ckrName names a return value: ours from the table above, a standard one
// from the error text miekg/pkcs11 gives ("pkcs11: 0x7: CKR_ARGUMENTS_BAD").
func ckrName(rv pkcs11.Error) string {
	if uint(rv)&^0xFFFF == pkcs11.CKR_VENDOR_DEFINED|gd {
		if n, ok := guardianErrors[uint(rv)&0xFFFF]; ok {
			return "CKR_GUARDIAN_" + n
		}
	}
	if i := strings.LastIndex(rv.Error(), ": "); i >= 0 && len(rv.Error()) > i+2 {
		return rv.Error()[i+2:]
	}
	return "CKR_?"
}

// refused wraps a failed call with its name and the CKR name of its error.
func refused(what string, err error) error {
	var rv pkcs11.Error
	if errors.As(err, &rv) {
		return fmt.Errorf("%s: %s (0x%08x)", what, ckrName(rv), uint(rv))
	}
	return fmt.Errorf("%s: %v", what, err)
}

// miekg/pkcs11 turns an int or uint into a CK_ULONG's bytes for standard and
// vendor attributes alike (C unsigned long: native size and byte order, 8
// bytes little-endian on x86_64 Linux), and p11-kit's RPC carries a vendor
// attribute's bytes unchanged.  Reading one back gives those bytes: put them
// into a uint, which has the size of C's unsigned long on Linux.
func fromULong(b []byte) (uint64, error) {
	var v uint
	if len(b) != int(unsafe.Sizeof(v)) {
		return 0, fmt.Errorf("a CK_ULONG attribute of %d bytes, not %d", len(b), unsafe.Sizeof(v))
	}
	copy((*[unsafe.Sizeof(v)]byte)(unsafe.Pointer(&v))[:], b)
	return uint64(v), nil
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// productAttrs: OEM/PRODUCT -> the two ID attributes; 32 hex digits -> CKA_GUARDIAN_PACKAGE_ID.
func productAttrs(arg string) ([]*pkcs11.Attribute, error) {
	if id, err := hex.DecodeString(arg); err == nil && len(id) == 16 {
		return []*pkcs11.Attribute{pkcs11.NewAttribute(CKA_GUARDIAN_PACKAGE_ID, id)}, nil
	}
	oem, product, ok := strings.Cut(arg, "/")
	if !ok || oem == "" || product == "" {
		return nil, usageError{arg + " is neither OEM/PRODUCT nor a 32-hex-digit package ID"}
	}
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(CKA_GUARDIAN_OEM_ID, []byte(oem)),
		pkcs11.NewAttribute(CKA_GUARDIAN_PRODUCT_ID, []byte(product)),
	}, nil
}

type guardian struct {
	p *pkcs11.Ctx
	s pkcs11.SessionHandle
}

// request: C_CreateObject of a CKO_GUARDIAN_REQUEST; returns the result's handle.
func (g guardian) request(what string, req uint, attrs ...*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	t := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, uint(CKO_GUARDIAN_REQUEST)),
		pkcs11.NewAttribute(CKA_GUARDIAN_REQUEST, req), // a uint: CK_ULONG bytes
	}, attrs...)
	h, err := g.p.CreateObject(g.s, t)
	if err != nil {
		return 0, refused("C_CreateObject ("+what+")", err)
	}
	return h, nil
}

// valueOf reads CKA_VALUE (miekg/pkcs11 makes the length call itself).
func (g guardian) valueOf(h pkcs11.ObjectHandle) ([]byte, error) {
	a, err := g.p.GetAttributeValue(g.s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return nil, refused("C_GetAttributeValue (CKA_VALUE)", err)
	}
	return a[0].Value, nil
}

func (g guardian) printPackage(h pkcs11.ObjectHandle, what string) error {
	types := []uint{CKA_GUARDIAN_OEM_ID, CKA_GUARDIAN_PRODUCT_ID, CKA_GUARDIAN_PACKAGE_ID, CKA_GUARDIAN_RELEASE,
		CKA_GUARDIAN_AUTHORISED_UNITS, CKA_GUARDIAN_ISSUED_UNITS, CKA_GUARDIAN_REMAINING_UNITS}
	t := make([]*pkcs11.Attribute, len(types))
	for i, typ := range types {
		t[i] = pkcs11.NewAttribute(typ, nil)
	}
	a, err := g.p.GetAttributeValue(g.s, h, t)
	if err != nil {
		return refused("C_GetAttributeValue (package)", err)
	}
	var n [4]uint64 // release, authorised, issued, remaining
	for i := range n {
		if n[i], err = fromULong(a[3+i].Value); err != nil {
			return err
		}
	}
	fmt.Printf("%s %s/%s release %d package %x: %d authorised, %d issued, %d remaining\n", what, a[0].Value,
		a[1].Value, n[0], a[2].Value, n[1], n[2], n[3])
	return nil
}

func (g guardian) run(cmd string, args []string) error {
	switch cmd {
	case "import":
		// (a) Import a package: CKA_VALUE = the file's bytes; the module finds
		// the Guardian's key itself.  The result is the package object.
		pkg, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		h, err := g.request("import", CKG_GUARDIAN_REQ_IMPORT, pkcs11.NewAttribute(pkcs11.CKA_VALUE, pkg))
		if err != nil {
			return err
		}
		return g.printPackage(h, "imported")
	case "issue":
		// (b) Issue a device certificate: the product (or one package), the
		// device's ID (text format, the default) and its public key.
		ids, err := productAttrs(args[0])
		if err != nil {
			return err
		}
		spki, err := os.ReadFile(args[2])
		if err != nil {
			return err
		}
		h, err := g.request("device certificate", CKG_GUARDIAN_REQ_DEVICE_CERT, append(ids,
			pkcs11.NewAttribute(CKA_GUARDIAN_DEVICE_ID, []byte(args[1])),
			pkcs11.NewAttribute(CKA_GUARDIAN_DEVICE_SPKI, spki))...)
		if err != nil {
			return err
		}
		// A CKO_CERTIFICATE session object: read its DER, then destroy it.
		der, err := g.valueOf(h)
		if err != nil {
			return err
		}
		if err := os.WriteFile(args[3], der, 0o644); err != nil {
			return err
		}
		if err := g.p.DestroyObject(g.s, h); err != nil {
			return refused("C_DestroyObject", err)
		}
		fmt.Printf("issued %s for device %s: %s (%d bytes)\n", args[0], args[1], args[3], len(der))
	case "remaining":
		// Not a request: find the product's package object (one per product,
		// its current release) and read its live counters.
		ids, err := productAttrs(args[0])
		if err == nil && len(ids) != 2 {
			err = usageError{args[0] + " is not OEM/PRODUCT"}
		}
		if err != nil {
			return err
		}
		t := append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, uint(CKO_GUARDIAN_PACKAGE))}, ids...)
		if err := g.p.FindObjectsInit(g.s, t); err != nil {
			return refused("C_FindObjectsInit", err)
		}
		found, _, err := g.p.FindObjects(g.s, 1)
		g.p.FindObjectsFinal(g.s)
		if err != nil {
			return refused("C_FindObjects", err)
		}
		if len(found) != 1 {
			return refused("find the package object", pkcs11.Error(CKR_GUARDIAN_PRODUCT_UNKNOWN))
		}
		return g.printPackage(found[0], "product")
	case "audit":
		// (c) The signed audit report, optionally for one product: a session
		// CKO_DATA object whose CKA_VALUE is the report.
		var ids []*pkcs11.Attribute
		if len(args) == 2 {
			var err error
			if ids, err = productAttrs(args[1]); err == nil && len(ids) != 2 {
				err = usageError{args[1] + " is not OEM/PRODUCT"}
			}
			if err != nil {
				return err
			}
		}
		h, err := g.request("audit export", CKG_GUARDIAN_REQ_AUDIT_EXPORT, ids...)
		if err != nil {
			return err
		}
		report, err := g.valueOf(h)
		if err != nil {
			return err
		}
		if err := os.WriteFile(args[0], report, 0o644); err != nil {
			return err
		}
		if err := g.p.DestroyObject(g.s, h); err != nil {
			return refused("C_DestroyObject", err)
		}
		fmt.Printf("audit report: %s (%d bytes)\n", args[0], len(report))
	}
	return nil
}

// open loads the module, finds the token by label and logs in as the user.
func open(module, token, pin string) (guardian, error) {
	p := pkcs11.New(module) // dlopen + C_GetFunctionList
	if p == nil {
		return guardian{}, fmt.Errorf("%s: cannot load it as a PKCS#11 module", module)
	}
	if err := p.Initialize(); err != nil {
		p.Destroy()
		return guardian{}, refused("C_Initialize", err)
	}
	g := guardian{p: p}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return g, refused("C_GetSlotList", err)
	}
	// The slot whose token has this label (SoftHSM, for one, adds an empty slot).
	for _, slot := range slots {
		if ti, err := p.GetTokenInfo(slot); err == nil && strings.TrimRight(ti.Label, " ") == token {
			// Read-write: the import needs it.
			if g.s, err = p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
				return g, refused("C_OpenSession", err)
			}
			if err := p.Login(g.s, pkcs11.CKU_USER, pin); err != nil {
				return g, refused("C_Login", err)
			}
			return g, nil
		}
	}
	return g, refused("find token "+token, pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT))
}

func (g guardian) close() {
	if g.p == nil {
		return
	}
	if g.s != 0 {
		g.p.CloseSession(g.s) // logs out too
	}
	g.p.Finalize()
	g.p.Destroy()
}

func main() {
	nargs := map[string][]int{"import": {1}, "issue": {4}, "remaining": {1}, "audit": {1, 2}}
	pin, havePin := os.LookupEnv("GUARDIAN_PIN")
	ok := havePin && len(os.Args) >= 4
	if ok {
		ok = false
		for _, n := range nargs[os.Args[3]] {
			ok = ok || len(os.Args)-4 == n
		}
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: GUARDIAN_PIN=... %s MODULE TOKEN import PACKAGE | issue PRODUCT DEVICE_ID "+
			"SPKI.der OUT.der | remaining OEM/PRODUCT | audit OUT [OEM/PRODUCT]\n", os.Args[0])
		os.Exit(2)
	}
	g, err := open(os.Args[1], os.Args[2], pin)
	if err == nil {
		err = g.run(os.Args[3], os.Args[4:])
	}
	g.close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "issue_cert: %v\n", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
