package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/secrets"
)

// KeyFileName is the secrets key file's name in the data directory, unless --secrets-key-file says otherwise.
const KeyFileName = "secrets.key"

// KeyFilePath is the key file fogo uses for a data directory and an optional --secrets-key-file.
func KeyFilePath(dataDir, keyFile string) string {
	if keyFile != "" {
		return keyFile
	}
	return filepath.Join(dataDir, KeyFileName)
}

// sealedState is state.db with the keyring that seals its secrets and the key file the keyring lives in.
type sealedState struct {
	st      *store.Store
	keys    *secrets.Keyring
	keyFile string
	log     *slog.Logger
	mu      sync.Mutex // one rotation at a time
}

// openSealedState opens state.db with its secrets key and finishes whatever an earlier fogo left undone, in order:
// the key file is created on the very first start (never when the store already holds sealed values: a new key
// could not open them); values still in plaintext (from a fogo before sealing) or under an older key (a rotation
// stopped after its first step) are sealed under the current key; keys nothing is sealed under any more are
// dropped from the key file (a rotation stopped after its second step); and the file is compacted if a reseal
// left old bytes in free pages. Each step is a no-op when there is nothing to do, so this runs at every start.
//
// With etcd set, the state is kept in etcd instead of DATA-DIR/state.db (the same steps; several controllers share
// it, so each needs the same key file).
func openSealedState(dataDir, keyFile string, etcd *store.EtcdConfig, log *slog.Logger) (*sealedState, error) {
	keyFile = KeyFilePath(dataDir, keyFile)
	loaded, err := secrets.LoadFile(keyFile)
	missing := errors.Is(err, fs.ErrNotExist)
	if err != nil && !missing {
		return nil, err
	}
	keys := secrets.NewKeyring()
	var st *store.Store
	if etcd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err = store.OpenEtcd(ctx, *etcd, keys)
		cancel()
	} else {
		st, err = store.Open(filepath.Join(dataDir, "state.db"), keys)
	}
	if err != nil {
		return nil, err
	}
	s := &sealedState{st: st, keys: keys, keyFile: keyFile, log: log}
	if err := s.prepare(loaded); err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

func (s *sealedState) prepare(loaded *secrets.Keyring) error {
	inUse, err := s.st.SealedKeyIDs()
	if err != nil {
		return err
	}
	var sealedUnder []string
	for id := range inUse {
		if id != "" {
			sealedUnder = append(sealedUnder, id)
		}
	}
	slices.Sort(sealedUnder)
	if loaded == nil {
		if len(sealedUnder) > 0 {
			return fmt.Errorf("state.db holds secrets sealed with key %s, but the secrets key file %s does not exist: "+
				"restore it from your backup or point --secrets-key-file at it (fogo does not make a new key, which could not open them)",
				strings.Join(sealedUnder, ", "), s.keyFile)
		}
		if loaded, err = secrets.Generate(); err != nil {
			return err
		}
		if err := secrets.WriteFile(s.keyFile, loaded); err != nil {
			return err
		}
		s.log.Info("created the secrets key file; back it up, fogo cannot open its secrets without it", "path", s.keyFile)
	}
	for _, id := range sealedUnder {
		if !loaded.Has(id) {
			return fmt.Errorf("state.db holds secrets sealed with key %s, which the secrets key file %s does not hold (it holds %s): is it the right key file?",
				id, s.keyFile, strings.Join(loaded.IDs(), ", "))
		}
	}
	s.keys.Replace(loaded)
	n, err := s.st.Reseal()
	if err != nil {
		return fmt.Errorf("seal secrets: %w", err)
	}
	if n > 0 {
		s.log.Info("sealed secrets under the current key", "values", n, "key", s.keys.Current())
	}
	if err := s.retire(); err != nil {
		return err
	}
	if pending, err := s.st.CompactPending(); err != nil {
		return err
	} else if pending {
		if err := s.st.Compact(); err != nil {
			return err
		}
		s.log.Info("compacted state.db so that no replaced secret stays in its free pages")
	}
	return nil
}

// retire drops the keys other than the current one from the keyring and the key file. Only after Reseal: nothing
// the store holds is sealed under them then.
func (s *sealedState) retire() error {
	if len(s.keys.IDs()) <= 1 {
		return nil
	}
	next := s.keys.Clone()
	gone := next.Retire()
	if err := secrets.WriteFile(s.keyFile, next); err != nil {
		return err
	}
	s.keys.Replace(next)
	s.log.Info("retired secrets keys", "keys", strings.Join(gone, ","), "current", s.keys.Current())
	return nil
}

// Rotation is what a key rotation did.
type Rotation struct {
	KeyID         string   `json:"keyId"`
	RetiredKeyIDs []string `json:"retiredKeyIds"`
	Resealed      int      `json:"resealed"`
}

// rotate replaces the current key, in steps a stop between which the next start finishes (openSealedState):
//
//  1. the key file gets a new current key and keeps the old ones (written atomically before the keyring in
//     memory changes, so everything sealed from now on opens after a restart);
//  2. every secret is sealed again under the new key, in one store transaction;
//  3. the key file is written without the old keys.
//
// Old ciphertext may remain in free pages of state.db; without its key it opens nothing, and the next start
// compacts the file (the reseal marked it) to drop it anyway.
func (s *sealedState) rotate() (Rotation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	before := s.keys.IDs()
	next := s.keys.Clone()
	id, err := next.Rotate()
	if err != nil {
		return Rotation{}, err
	}
	if err := secrets.WriteFile(s.keyFile, next); err != nil {
		return Rotation{}, fmt.Errorf("rotate key, step 1 (new key into the key file): %w", err)
	}
	s.keys.Replace(next)
	n, err := s.st.Reseal()
	if err != nil {
		return Rotation{}, fmt.Errorf("rotate key, step 2 (seal the secrets again; the next start finishes it): %w", err)
	}
	if err := s.retire(); err != nil {
		return Rotation{}, fmt.Errorf("rotate key, step 3 (drop the old key; the next start finishes it): %w", err)
	}
	s.log.Info("rotated the secrets key", "key", id, "resealed", n)
	return Rotation{KeyID: id, RetiredKeyIDs: before, Resealed: n}, nil
}

// RotateSecretsKey rotates the key that seals the secrets of a running fogo.
func (a *App) RotateSecretsKey(context.Context) (Rotation, error) { return a.sealed.rotate() }

// RotateKeyOffline rotates the secrets key of a fogo that is not running: it opens the data directory's state
// (finishing anything a stopped fogo left), rotates, and compacts the file.
func RotateKeyOffline(dataDir, keyFile string, log *slog.Logger) (Rotation, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "state.db")); err != nil {
		return Rotation{}, fmt.Errorf("no fogo state in %s: %w", dataDir, err)
	}
	s, err := openSealedState(dataDir, keyFile, nil, log)
	if err != nil {
		return Rotation{}, err
	}
	defer s.st.Close()
	r, err := s.rotate()
	if err != nil {
		return r, err
	}
	return r, s.st.Compact()
}

const superPasswordKey = "internal-superuser"

// superPassword returns the internal superuser's password, kept sealed in the store. A data directory from a fogo
// that kept it in DATA-DIR/internal-secret has it moved into the store and the file removed; a new one gets a
// random password.
func (a *App) superPassword() (string, error) {
	type cred struct {
		Password string `json:"password"`
	}
	var c cred
	err := a.Store.Update(func(tx *store.Tx) error {
		if ok, err := tx.Get(store.Secrets, superPasswordKey, &c); err != nil || ok {
			return err
		}
		if b, err := os.ReadFile(a.legacySecretFile()); err == nil && strings.TrimSpace(string(b)) != "" {
			c.Password = strings.TrimSpace(string(b))
		} else {
			buf := make([]byte, 24)
			if _, err := rand.Read(buf); err != nil {
				return err
			}
			c.Password = hex.EncodeToString(buf)
		}
		return tx.Put(store.Secrets, superPasswordKey, &c)
	})
	if err != nil {
		return "", fmt.Errorf("internal superuser password: %w", err)
	}
	if err := os.Remove(a.legacySecretFile()); err == nil {
		a.log.Info("moved the internal superuser password into the sealed state", "removed", a.legacySecretFile())
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	return c.Password, nil
}

func (a *App) legacySecretFile() string { return filepath.Join(a.opts.DataDir, "internal-secret") }

// apiTokenKey is the API token's key in the secrets bucket (kept there only when the state is shared in etcd).
const apiTokenKey = "api-token"

// shareToken makes every controller sharing a state in etcd answer to one API token: the first one's token goes
// into the sealed state, and the others take it (and write it to their DATA-DIR/api-token, which the CLI reads).
// A token from FOGO_API_TOKEN is the operator's to keep equal; a bbolt state has one process and nothing to share.
func (a *App) shareToken(context.Context) error {
	if cli, _ := a.Store.Etcd(); cli == nil || a.TokenFile == "" {
		return nil
	}
	type tok struct {
		Token string `json:"token"`
	}
	var t tok
	err := a.Store.Update(func(tx *store.Tx) error {
		t = tok{}
		if ok, err := tx.Get(store.Secrets, apiTokenKey, &t); err != nil || ok {
			return err
		}
		t.Token = a.Token
		return tx.Put(store.Secrets, apiTokenKey, &t)
	})
	if err != nil {
		return fmt.Errorf("share the API token: %w", err)
	}
	if t.Token == a.Token {
		return nil
	}
	if err := os.WriteFile(a.TokenFile, []byte(t.Token+"\n"), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", a.TokenFile, err)
	}
	a.Token = t.Token
	a.log.Info("took the API token the controllers share", "file", a.TokenFile)
	return nil
}
