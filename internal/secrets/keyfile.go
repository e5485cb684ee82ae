package secrets

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const fileHeader = `# fogo secrets key file. Keep it secret and back it up: without it fogo cannot open the secrets in its state.
# One key a line, "ID BASE64"; the first is the current key. Rotate with 'fogo secrets rotate-key'.
`

// LoadFile reads a key file. It refuses a file that group or others may read or write (the error says how to fix
// it) and a file with no key. A missing file is an error wrapping os.ErrNotExist.
func LoadFile(path string) (*Keyring, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secrets key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secrets key file %s has mode %04o: group and others must have no access (chmod 600 %s)", path, perm, path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key file: %w", err)
	}
	r, err := parseFile(raw)
	if err != nil {
		return nil, fmt.Errorf("secrets key file %s: %w", path, err)
	}
	return r, nil
}

func parseFile(raw []byte) (*Keyring, error) {
	var keys []Key
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, enc, ok := strings.Cut(line, " ")
		if !ok || !validID(id) || seen[id] {
			return nil, fmt.Errorf("line %d: want a unique key id and a base64 key", n)
		}
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
		if err != nil || len(b) != KeySize {
			return nil, fmt.Errorf("line %d (key %s): want %d bytes in base64", n, id, KeySize)
		}
		k := Key{ID: id}
		copy(k.key[:], b)
		keys = append(keys, k)
		seen[id] = true
	}
	if len(keys) == 0 {
		return nil, errors.New("no key")
	}
	return NewKeyring(keys...), nil
}

// WriteFile writes the keyring to path atomically with mode 0600: a temporary file in the same directory, synced,
// renamed over path, and the directory synced. A reader sees the old file or the new one, never a torn one.
func WriteFile(path string, r *Keyring) error {
	var buf bytes.Buffer
	buf.WriteString(fileHeader)
	for _, k := range r.snapshot() {
		fmt.Fprintf(&buf, "%s %s\n", k.ID, base64.StdEncoding.EncodeToString(k.key[:]))
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write secrets key file: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write secrets key file: %w", err)
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("write secrets key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write secrets key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write secrets key file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write secrets key file: %w", err)
	}
	return SyncDir(dir)
}

// SyncDir makes a rename in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
