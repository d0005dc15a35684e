package seal

import (
	"bytes"
	"errors"
	"testing"
)

func key(id string, b byte) Key { return Key{ID: id, Key: bytes.Repeat([]byte{b}, 32)} }

func mustNew(t *testing.T, keys ...Key) *Sealer {
	t.Helper()
	s, err := New(keys)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSealOpensOnlyInItsPlace(t *testing.T) {
	s := mustNew(t, key("k1", 1))
	sealed := s.Seal("tc:a", []byte("secret token"))
	if bytes.Contains(sealed, []byte("secret token")) || !IsSealed(sealed) {
		t.Fatalf("Seal() = %q", sealed)
	}
	if plain, err := s.Open("tc:a", sealed); err != nil || string(plain) != "secret token" {
		t.Errorf("Open() = %q, %v", plain, err)
	}
	if _, err := s.Open("tc:b", sealed); !errors.Is(err, ErrUnopened) {
		t.Errorf("Open() in another place: err %v, want ErrUnopened", err)
	}
	if _, err := s.Open("tc:a", []byte("secret token")); !errors.Is(err, ErrUnopened) {
		t.Errorf("Open() of a value in clear: err %v", err)
	}
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	if _, err := s.Open("tc:a", tampered); !errors.Is(err, ErrUnopened) {
		t.Errorf("Open() of a changed value: err %v", err)
	}
}

func TestEveryKeyOpensTheFirstSeals(t *testing.T) {
	old, next := mustNew(t, key("old", 1)), mustNew(t, key("new", 2), key("old", 1))
	byOld := old.Seal("k", []byte("v"))
	if plain, id, err := next.OpenBy("k", byOld); err != nil || string(plain) != "v" || id != "old" {
		t.Errorf("OpenBy() of the old key's value = %q, %q, %v", plain, id, err)
	}
	byNext := next.Seal("k", []byte("v"))
	if _, id, err := old.OpenBy("k", byNext); !errors.Is(err, ErrUnopened) || id != "new" {
		t.Errorf("OpenBy() without the sealing key = id %q, err %v; want the id named and ErrUnopened", id, err)
	}
	if next.SealingID() != "new" || len(next.IDs()) != 2 {
		t.Errorf("SealingID() = %q, IDs() = %v", next.SealingID(), next.IDs())
	}
	if !bytes.Equal(old.DerivedSecret(), mustNew(t, key("other-id", 1)).DerivedSecret()) ||
		bytes.Equal(old.DerivedSecret(), next.DerivedSecret()) {
		t.Error("DerivedSecret() must follow the sealing key's bytes only")
	}
}

func TestKeyProblems(t *testing.T) {
	for _, keys := range [][]Key{
		nil,
		{{ID: "k", Key: []byte("short")}},
		{key("", 1)},
		{key("a:b", 1)},
		{key("k", 1), key("k", 2)},
	} {
		if _, err := New(keys); err == nil {
			t.Errorf("New(%v) accepted", keys)
		}
	}
	s := mustNew(t, key("a", 1), key("b", 1))
	if got := s.SameBytes(); len(got) != 1 || got[0] != "b (same key as a)" {
		t.Errorf("SameBytes() = %q", got)
	}
}

func TestNamerHides(t *testing.T) {
	a, b := NewNamer([]byte("secret a")), NewNamer([]byte("secret b"))
	name := string(a.Hide([]byte("2094979/user-1/viewer")))
	if name != string(a.Hide([]byte("2094979/user-1/viewer"))) {
		t.Error("Hide() gives one identity two names")
	}
	if name == string(a.Hide([]byte("2094979/user-2/viewer"))) || name == string(b.Hide([]byte("2094979/user-1/viewer"))) {
		t.Error("Hide() gives two identities, or two secrets, one name")
	}
	if bytes.Contains([]byte(name), []byte("user-1")) || len(name) != 43 {
		t.Errorf("Hide() = %q, want 43 characters of base64url and no identity", name)
	}
}
