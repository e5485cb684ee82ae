// Package scram computes PostgreSQL SCRAM-SHA-256 password verifiers on fogo's side, so that a role's password
// is set with ALTER ROLE … PASSWORD '<verifier>' and the plain password is never sent to an instance, stored or
// logged by the server.
package scram

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// Verifier returns the SCRAM-SHA-256 verifier of password in PostgreSQL's stored form
// ("SCRAM-SHA-256$4096:salt$StoredKey:ServerKey", RFC 5803), with a fresh random salt.
func Verifier(password string) string {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	const iterations = 4096
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		panic(err) // only for invalid parameters, which these are not
	}
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(stored[:]), b64(serverKey))
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}
