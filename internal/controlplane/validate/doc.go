// Package validate decodes ARM request bodies into specs and applies the contract's rules, returning the
// catalogue's error (code, status, message) for each violation. It is pure: checks that need the store (does the
// partner exist, is a database in another group) belong to package service.
//
// Decoding is strict about types and lenient about unknown properties (as ARM is): malformed JSON and a wrong
// type give InvalidRequestContent naming the field; enum values are matched case-insensitively and normalised.
package validate
