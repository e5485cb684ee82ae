// Package service is fogo's domain layer: what creating, changing and deleting servers, databases and failover
// groups means, the checks that need the store (does the partner exist, is the database already in another
// group, is the group busy), and which long-running operation each change starts.
//
// The REST layer decodes requests with package validate, calls one method here, and renders the result. Errors
// are *errcatalog.Error values carrying the catalogue's code and HTTP status.
package service
