package polyv

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"sort"
	"strings"
)

// SignMethod is the digest Polyv uses for the sign parameter.
type SignMethod string

// The sign methods Polyv accepts.
const (
	SignMD5    SignMethod = "MD5"
	SignSHA256 SignMethod = "SHA256"
)

// Valid reports whether m is a method Polyv accepts.
func (m SignMethod) Valid() bool { return m == SignMD5 || m == SignSHA256 }

// Sign returns Polyv's signature of params: blank values are dropped, keys are
// sorted in ASCII order and joined as key1value1key2value2, the secret is put
// at both ends, and the result is hashed. The hash is SHA-256 when params holds
// signatureMethod=SHA256 and MD5 otherwise, written as uppercase hex. A "sign"
// entry in params is ignored.
func Sign(params map[string]string, secret string) string {
	keys := make([]string, 0, len(params))
	for k, v := range params {
		if k == "sign" || isBlank(v) {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)

	var b strings.Builder
	b.WriteString(secret)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteString(params[k])
	}
	b.WriteString(secret)

	var sum []byte
	if params["signatureMethod"] == string(SignSHA256) {
		s := sha256.Sum256([]byte(b.String()))
		sum = s[:]
	} else {
		s := md5.Sum([]byte(b.String()))
		sum = s[:]
	}
	return strings.ToUpper(hex.EncodeToString(sum))
}

// SignedForm returns the form body to send: the non-blank params, a
// signatureMethod param when method is SHA256, and their sign. It holds
// exactly the params that were signed, plus sign.
func SignedForm(params map[string]string, secret string, method SignMethod) url.Values {
	signed := make(map[string]string, len(params)+1)
	for k, v := range params {
		if k != "sign" && !isBlank(v) {
			signed[k] = v
		}
	}
	if method == SignSHA256 {
		signed["signatureMethod"] = string(SignSHA256)
	}
	form := make(url.Values, len(signed)+1)
	for k, v := range signed {
		form.Set(k, v)
	}
	form.Set("sign", Sign(signed, secret))
	return form
}

func isBlank(s string) bool { return strings.TrimSpace(s) == "" }
