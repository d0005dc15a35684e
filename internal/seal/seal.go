// Package seal keeps secrets out of Redis: it encrypts values at rest with
// AES-256-GCM and hides identities in key names behind HMAC-SHA256, both from
// the standard library. It knows nothing of Redis or tokens.
package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
)

// Key is one AES-256 key with the id stored beside what it seals.
type Key struct {
	ID  string
	Key []byte // 32 bytes
}

// Sealer seals with the first of its keys and opens with any of them. The
// associated data (for the cache, the Redis key) binds a sealed value to its
// place, so a value moved elsewhere does not open.
type Sealer struct {
	sealID    string
	ids       []string // in the configured order
	aeads     map[string]cipher.AEAD
	sameBytes []string
	derived   []byte
}

// magic starts every sealed value; a value without it is not sealed.
var magic = []byte("tcE1:")

// ErrUnopened is the error for a value no configured key opens, unsealed
// values included.
var ErrUnopened = errors.New("seal: value cannot be opened")

// New checks keys (32 bytes each; ids non-empty, without ':', unique) and
// returns a Sealer for them. The first key seals.
func New(keys []Key) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("seal: no keys")
	}
	s := &Sealer{sealID: keys[0].ID, aeads: map[string]cipher.AEAD{}}
	for i, k := range keys {
		if len(k.Key) != 32 {
			return nil, fmt.Errorf("encryption key %q: need 32 bytes, have %d", k.ID, len(k.Key))
		}
		if k.ID == "" || bytes.ContainsRune([]byte(k.ID), ':') {
			return nil, fmt.Errorf("encryption key id %q: must be non-empty, without ':'", k.ID)
		}
		if _, dup := s.aeads[k.ID]; dup {
			return nil, fmt.Errorf("encryption key id %q given twice", k.ID)
		}
		for _, earlier := range keys[:i] {
			if subtle.ConstantTimeCompare(earlier.Key, k.Key) == 1 {
				s.sameBytes = append(s.sameBytes, fmt.Sprintf("%s (same key as %s)", k.ID, earlier.ID))
			}
		}
		block, _ := aes.NewCipher(k.Key) // 32 bytes: AES-256, cannot fail
		aead, _ := cipher.NewGCM(block)
		s.aeads[k.ID] = aead
		s.ids = append(s.ids, k.ID)
	}
	m := hmac.New(sha256.New, keys[0].Key)
	m.Write([]byte("tokencache key identity v1"))
	s.derived = m.Sum(nil)
	return s, nil
}

// SealingID is the id of the key that seals.
func (s *Sealer) SealingID() string { return s.sealID }

// IDs lists the configured key ids in order, the sealing one first. The
// slice is the Sealer's own: callers must not change it.
func (s *Sealer) IDs() []string { return s.ids }

// SameBytes describes each id whose key repeats an earlier id's bytes.
func (s *Sealer) SameBytes() []string { return s.sameBytes }

// DerivedSecret is a secret derived from the sealing key alone: the name key
// releases before the fleet-wide one used, kept so that upgrading renames
// nothing.
func (s *Sealer) DerivedSecret() []byte { return s.derived }

// Seal returns plain sealed with the sealing key for associated data aad.
func (s *Sealer) Seal(aad string, plain []byte) []byte {
	return s.SealWith(s.sealID, aad, plain)
}

// SealWith returns plain sealed with key id, which must be configured:
// magic, key id, ':', nonce, ciphertext.
func (s *Sealer) SealWith(id, aad string, plain []byte) []byte {
	aead := s.aeads[id]
	out := append(append(append([]byte{}, magic...), id...), ':')
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce)
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plain, []byte(aad))
}

// Open reverses Seal; any value no key opens is ErrUnopened.
func (s *Sealer) Open(aad string, b []byte) ([]byte, error) {
	plain, _, err := s.OpenBy(aad, b)
	return plain, err
}

// OpenBy is Open that also returns the id of the key b names, whether or
// not that key is configured.
func (s *Sealer) OpenBy(aad string, b []byte) (plain []byte, id string, err error) {
	rest, ok := bytes.CutPrefix(b, magic)
	if !ok {
		return nil, "", ErrUnopened
	}
	rawID, rest, ok := bytes.Cut(rest, []byte(":"))
	if !ok {
		return nil, "", ErrUnopened
	}
	aead := s.aeads[string(rawID)]
	if aead == nil || len(rest) < aead.NonceSize() {
		return nil, string(rawID), ErrUnopened
	}
	plain, err = aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], []byte(aad))
	if err != nil {
		return nil, string(rawID), ErrUnopened
	}
	return plain, string(rawID), nil
}

// IsSealed reports whether b has the form Seal gives, whatever key sealed it.
func IsSealed(b []byte) bool { return bytes.HasPrefix(b, magic) }
