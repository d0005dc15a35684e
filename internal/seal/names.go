package seal

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"sync"
)

// Namer hides identities behind a keyed hash: one name per identity, no
// identity in clear. It is safe for concurrent use.
type Namer struct {
	macs sync.Pool // of hash.Hash keyed by the secret, reused
}

// NewNamer returns a Namer keyed by secret.
func NewNamer(secret []byte) *Namer {
	n := &Namer{}
	n.macs.New = func() any { return hmac.New(sha256.New, secret) }
	return n
}

// Hide returns id's name, base64url without padding. It reuses id's storage.
func (n *Namer) Hide(id []byte) []byte {
	m := n.macs.Get().(hash.Hash)
	m.Reset()
	m.Write(id)
	var sum [sha256.Size]byte
	hidden := base64.RawURLEncoding.AppendEncode(id[:0], m.Sum(sum[:0]))
	n.macs.Put(m)
	return hidden
}
