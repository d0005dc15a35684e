package cache

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

// EncryptionKey is one AES-256 key with the id stored beside what it seals.
type EncryptionKey struct {
	ID  string
	Key []byte // 32 bytes
}

// sealer encrypts values at rest with AES-256-GCM, the Redis key as
// associated data, so that a value moved to another key does not open. The
// first key seals; every key opens. Key names are hidden by the fleet's name
// key (see names.go), not by these keys, so that a rotation renames nothing.
type sealer struct {
	sealID string
	ids    []string // in the configured order
	aeads  map[string]cipher.AEAD
	// sameBytes lists ids whose key repeats an earlier id's bytes.
	sameBytes []string
	// firstNameKey is the name key this instance makes when the fleet has
	// none: derived from the sealing key as releases before the shared name
	// key named everything, so that upgrading renames nothing.
	firstNameKey []byte
}

// sealedMagic starts every sealed value; a value without it is not sealed.
var sealedMagic = []byte("tcE1:")

func newSealer(keys []EncryptionKey) (*sealer, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	s := &sealer{sealID: keys[0].ID, aeads: map[string]cipher.AEAD{}}
	for i, k := range keys {
		if len(k.Key) != 32 {
			return nil, fmt.Errorf("cache: encryption key %q: need 32 bytes, have %d", k.ID, len(k.Key))
		}
		if k.ID == "" || bytes.ContainsRune([]byte(k.ID), ':') {
			return nil, fmt.Errorf("cache: encryption key id %q: must be non-empty, without ':'", k.ID)
		}
		if _, dup := s.aeads[k.ID]; dup {
			return nil, fmt.Errorf("cache: encryption key id %q given twice", k.ID)
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
	s.firstNameKey = m.Sum(nil)
	return s, nil
}

// seal returns plain sealed with the sealing key for redisKey.
func (s *sealer) seal(redisKey string, plain []byte) []byte {
	return s.sealWith(s.sealID, redisKey, plain)
}

// sealWith returns plain sealed with key id, for associated data aad:
// magic, key id, ':', nonce, ciphertext.
func (s *sealer) sealWith(id, aad string, plain []byte) []byte {
	aead := s.aeads[id]
	out := append(append(append([]byte{}, sealedMagic...), id...), ':')
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce)
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plain, []byte(aad))
}

var errUnsealed = errors.New("cache: value cannot be opened")

// open reverses seal. Any value no key opens, unsealed ones included, is an
// error: the caller treats it as a miss and overwrites it.
func (s *sealer) open(redisKey string, b []byte) ([]byte, error) {
	plain, _, err := s.openBy(redisKey, b)
	return plain, err
}

// openBy is open that also returns the id of the key b names, whether or
// not that key is configured.
func (s *sealer) openBy(aad string, b []byte) (plain []byte, id string, err error) {
	rest, ok := bytes.CutPrefix(b, sealedMagic)
	if !ok {
		return nil, "", errUnsealed
	}
	rawID, rest, ok := bytes.Cut(rest, []byte(":"))
	if !ok {
		return nil, "", errUnsealed
	}
	aead := s.aeads[string(rawID)]
	if aead == nil || len(rest) < aead.NonceSize() {
		return nil, string(rawID), errUnsealed
	}
	plain, err = aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], []byte(aad))
	if err != nil {
		return nil, string(rawID), errUnsealed
	}
	return plain, string(rawID), nil
}
