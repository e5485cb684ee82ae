// Package arm serves fogo's ARM-compatible REST API (Microsoft.Sql servers, databases, failoverGroups and their
// long-running operations), so that the Azure SDK for Go, curl and the fogo CLI can drive it.
//
// Handlers are thin: authenticate, check the api-version, parse the path into resource IDs, decode the body with
// package validate, call one method of package service, and render the result. Long-running operations answer
// 201/202 with absolute Azure-AsyncOperation and Location URLs and Retry-After; the operation-status resource and
// the Location resource are served here from the durable operation records. Errors are written in exactly one
// place (errcatalog.Write) in the ARM envelope.
package arm
