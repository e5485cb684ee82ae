// Package secrets seals fogo's secrets at rest: a keyring of AES-256-GCM keys, each with an id, and the key file
// that holds it outside the state store.
//
// A sealed value is a self-describing string,
//
//	fogo-sealed:v1:<key id>:<base64url(nonce || ciphertext)>
//
// sealed under the keyring's current key. The key id and a caller-chosen context (the store uses "bucket/key") are
// the GCM additional data, so a sealed value opens only under the id it names and only in the record it was sealed
// for: copying it into another record, or relabelling it with another key id, fails authentication.
//
// Rotation adds a new current key and keeps the old ones until every value has been sealed again
// (Keyring.Rotate, then the caller reseals, then Keyring.Retire). The key file is written atomically at each
// step, so a process that stops between steps finds a keyring that opens everything the store holds.
package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
)

// Prefix starts every sealed value.
const Prefix = "fogo-sealed:v1:"

// KeySize is the length of a key: AES-256.
const KeySize = 32

// ErrUnknownKey is returned when a sealed value names a key the keyring does not hold.
var ErrUnknownKey = errors.New("sealed with a key that is not in the keyring")

// ErrTampered is returned when a sealed value does not authenticate: altered, moved to another context, or sealed
// under another key with the same id.
var ErrTampered = errors.New("sealed value does not authenticate")

// Key is one AES-256 key and its id.
type Key struct {
	ID  string
	key [KeySize]byte
}

// NewKey returns a fresh random key with a random id.
func NewKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k.key[:]); err != nil {
		return k, fmt.Errorf("generate key: %w", err)
	}
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return k, fmt.Errorf("generate key id: %w", err)
	}
	k.ID = "k" + hex.EncodeToString(id[:])
	return k, nil
}

// validID keeps ids to characters that cannot break the sealed format or the key file's lines.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Keyring holds the current key (keys[0]) and the older keys that still open values. It is safe for concurrent use.
type Keyring struct {
	mu   sync.RWMutex
	keys []Key
}

// NewKeyring returns a keyring holding keys, the first one current. It may be empty (it then seals nothing).
func NewKeyring(keys ...Key) *Keyring {
	return &Keyring{keys: append([]Key(nil), keys...)}
}

// Generate returns a keyring with one fresh key.
func Generate() (*Keyring, error) {
	k, err := NewKey()
	if err != nil {
		return nil, err
	}
	return NewKeyring(k), nil
}

// Current is the id of the key new values are sealed with ("" for an empty keyring).
func (r *Keyring) Current() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.keys) == 0 {
		return ""
	}
	return r.keys[0].ID
}

// IDs lists the key ids, the current one first.
func (r *Keyring) IDs() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := make([]string, len(r.keys))
	for i, k := range r.keys {
		ids[i] = k.ID
	}
	return ids
}

// Has reports whether the keyring holds the key id.
func (r *Keyring) Has(id string) bool {
	_, ok := r.find(id)
	return ok
}

func (r *Keyring) find(id string) (Key, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, k := range r.keys {
		if k.ID == id {
			return k, true
		}
	}
	return Key{}, false
}

func (r *Keyring) snapshot() []Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return append([]Key(nil), r.keys...)
}

// Clone returns a keyring holding the same keys (to prepare a change before making it).
func (r *Keyring) Clone() *Keyring { return NewKeyring(r.snapshot()...) }

// Replace makes the keyring hold exactly the keys of other (used when a key file is read again).
func (r *Keyring) Replace(other *Keyring) {
	keys := other.snapshot()
	r.mu.Lock()
	r.keys = keys
	r.mu.Unlock()
}

// Rotate makes a fresh key current, keeping the others so that values sealed under them still open, and returns
// its id.
func (r *Keyring) Rotate() (string, error) {
	k, err := NewKey()
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = append([]Key{k}, r.keys...)
	return k.ID, nil
}

// Retire drops every key but the current one. Call it only once nothing sealed under them is needed any more.
func (r *Keyring) Retire() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var gone []string
	for _, k := range r.keys[min(1, len(r.keys)):] {
		gone = append(gone, k.ID)
	}
	r.keys = r.keys[:min(1, len(r.keys))]
	return gone
}

func aead(k Key) (cipher.AEAD, error) {
	block, err := aes.NewCipher(k.key[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func additionalData(id, context string) []byte {
	return []byte(Prefix + id + "\x00" + context)
}

// Seal seals plaintext for context under the current key.
func (r *Keyring) Seal(plaintext []byte, context string) ([]byte, error) {
	r.mu.RLock()
	if len(r.keys) == 0 {
		r.mu.RUnlock()
		return nil, errors.New("seal: the keyring holds no key")
	}
	k := r.keys[0]
	r.mu.RUnlock()
	g, err := aead(k)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize(), g.NonceSize()+len(plaintext)+g.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	box := g.Seal(nonce, nonce, plaintext, additionalData(k.ID, context))
	out := make([]byte, 0, len(Prefix)+len(k.ID)+1+base64.RawURLEncoding.EncodedLen(len(box)))
	out = append(out, Prefix...)
	out = append(out, k.ID...)
	out = append(out, ':')
	return base64.RawURLEncoding.AppendEncode(out, box), nil
}

// Open returns the plaintext of a value sealed for context. The error says why it cannot (never what it holds).
func (r *Keyring) Open(sealed []byte, context string) ([]byte, error) {
	id, box, err := parse(sealed)
	if err != nil {
		return nil, err
	}
	k, ok := r.find(id)
	if !ok {
		return nil, fmt.Errorf("key %s: %w", id, ErrUnknownKey)
	}
	g, err := aead(k)
	if err != nil {
		return nil, err
	}
	if len(box) < g.NonceSize()+g.Overhead() {
		return nil, ErrTampered
	}
	pt, err := g.Open(nil, box[:g.NonceSize()], box[g.NonceSize():], additionalData(id, context))
	if err != nil {
		return nil, ErrTampered
	}
	return pt, nil
}

// IsSealed reports whether b has the sealed form's prefix (it may still fail to open).
func IsSealed(b []byte) bool { return bytes.HasPrefix(b, []byte(Prefix)) }

// KeyID returns the id of the key a sealed value names.
func KeyID(sealed []byte) (string, error) {
	id, _, err := parse(sealed)
	return id, err
}

func parse(sealed []byte) (id string, box []byte, err error) {
	rest, ok := bytes.CutPrefix(sealed, []byte(Prefix))
	if !ok {
		return "", nil, errors.New("not a sealed value")
	}
	rawID, enc, ok := bytes.Cut(rest, []byte(":"))
	if !ok || !validID(string(rawID)) {
		return "", nil, errors.New("malformed sealed value")
	}
	box, err = base64.RawURLEncoding.AppendDecode(nil, enc)
	if err != nil {
		return "", nil, errors.New("malformed sealed value")
	}
	return string(rawID), box, nil
}
