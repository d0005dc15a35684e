package cache

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// EncryptionKey is one AES-256 key with the id stored beside what it seals.
type EncryptionKey struct {
	ID  string
	Key []byte // 32 bytes
}

// sealer encrypts values at rest with AES-256-GCM, the Redis key as
// associated data, so that a value moved to another key does not open. The
// first key seals; every key opens. It also hides identities in key names
// behind an HMAC.
type sealer struct {
	sealID string
	aeads  map[string]cipher.AEAD
	idMACs sync.Pool // of hash.Hash: HMACs keyed for identities, reused
}

// sealedMagic starts every sealed value; a value without it is not sealed.
var sealedMagic = []byte("tcE1:")

func newSealer(keys []EncryptionKey) (*sealer, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	s := &sealer{sealID: keys[0].ID, aeads: map[string]cipher.AEAD{}}
	for _, k := range keys {
		if len(k.Key) != 32 {
			return nil, fmt.Errorf("cache: encryption key %q: need 32 bytes, have %d", k.ID, len(k.Key))
		}
		if k.ID == "" || bytes.ContainsRune([]byte(k.ID), ':') {
			return nil, fmt.Errorf("cache: encryption key id %q: must be non-empty, without ':'", k.ID)
		}
		if _, dup := s.aeads[k.ID]; dup {
			return nil, fmt.Errorf("cache: encryption key id %q given twice", k.ID)
		}
		block, _ := aes.NewCipher(k.Key) // 32 bytes: AES-256, cannot fail
		aead, _ := cipher.NewGCM(block)
		s.aeads[k.ID] = aead
	}
	m := hmac.New(sha256.New, keys[0].Key)
	m.Write([]byte("tokencache key identity v1"))
	idKey := m.Sum(nil)
	s.idMACs.New = func() any { return hmac.New(sha256.New, idKey) }
	return s, nil
}

// seal returns plain sealed for redisKey: magic, key id, ':', nonce, ciphertext.
func (s *sealer) seal(redisKey string, plain []byte) []byte {
	aead := s.aeads[s.sealID]
	out := append(append(append([]byte{}, sealedMagic...), s.sealID...), ':')
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce)
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plain, []byte(redisKey))
}

var errUnsealed = errors.New("cache: value cannot be opened")

// open reverses seal. Any value no key opens, unsealed ones included, is an
// error: the caller treats it as a miss and overwrites it.
func (s *sealer) open(redisKey string, b []byte) ([]byte, error) {
	rest, ok := bytes.CutPrefix(b, sealedMagic)
	if !ok {
		return nil, errUnsealed
	}
	id, rest, ok := bytes.Cut(rest, []byte(":"))
	aead := s.aeads[string(id)]
	if !ok || aead == nil || len(rest) < aead.NonceSize() {
		return nil, errUnsealed
	}
	plain, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], []byte(redisKey))
	if err != nil {
		return nil, errUnsealed
	}
	return plain, nil
}

// identity hides a key identity behind a keyed hash: still one name per
// identity, but no user id in clear.
func (s *sealer) identity(id []byte) []byte {
	m := s.idMACs.Get().(hash.Hash)
	m.Reset()
	m.Write(id)
	var sum [sha256.Size]byte
	hidden := base64.RawURLEncoding.AppendEncode(id[:0], m.Sum(sum[:0]))
	s.idMACs.Put(m)
	return hidden
}
