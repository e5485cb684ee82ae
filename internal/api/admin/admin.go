// Package admin serves fogo's own administration endpoints under /admin/, behind the API's bearer token (mount it
// like /workspaces/). POST /admin/secrets/rotate-key rotates the key that seals the secrets in fogo's state and
// answers what it did: {"keyId": …, "retiredKeyIds": […], "resealed": N}. Key ids are not secrets; keys never
// leave the key file.
package admin

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/fogo-db/fogo/internal/errcatalog"
)

// Config is what the endpoints act on.
type Config struct {
	// RotateKey rotates the secrets key; its result is answered as JSON.
	RotateKey func(context.Context) (any, error)
}

// New returns the handler.
func New(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/admin/secrets/rotate-key", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			errcatalog.Write(w, errcatalog.Newf("UnsupportedHttpMethod", "The HTTP method '%s' is not supported for this resource.", r.Method))
			return
		}
		res, err := cfg.RotateKey(r.Context())
		if err != nil {
			errcatalog.Write(w, errcatalog.Newf("InternalServerError", "The secrets key rotation did not finish: %v", err))
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_ = json.NewEncoder(w).Encode(res)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		errcatalog.Write(w, errcatalog.Newf("ResourceNotFound", "No route for '%s %s'.", r.Method, r.URL.Path))
	})
	return mux
}
