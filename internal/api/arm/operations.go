package arm

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// operation serves the two views of a long-running operation: the Azure-AsyncOperation status resource and
// the Location resource (202 while running, then the final result).
func (a *API) operation(w http.ResponseWriter, r *http.Request, p path) {
	if !a.onlyMethods(w, r, http.MethodGet) {
		return
	}
	op, err := a.svc.Operation(p.opID)
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	if strings.HasSuffix(p.opKind, "azureasyncoperation") {
		a.operationStatus(w, r, op)
		return
	}
	a.operationResult(w, r, op)
}

type opStatus struct {
	ID         string         `json:"id"`
	Name       string         `json:"name"`
	Status     string         `json:"status"`
	StartTime  string         `json:"startTime"`
	EndTime    string         `json:"endTime,omitempty"`
	Error      *opErrorBody   `json:"error,omitempty"`
	Properties map[string]any `json:"properties,omitempty"`
}

type opErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (a *API) operationStatus(w http.ResponseWriter, r *http.Request, op *model.Operation) {
	body := opStatus{
		ID: r.URL.Path, Name: op.ID, Status: op.Status, StartTime: op.Created.Format(time.RFC3339Nano),
		Properties: map[string]any{"kind": op.Kind, "step": op.Step, "resource": op.Resource},
	}
	if len(op.Warnings) > 0 {
		body.Properties["warnings"] = op.Warnings // extension: e.g. an old primary that had to be killed
	}
	if !op.Finished.IsZero() {
		body.EndTime = op.Finished.Format(time.RFC3339Nano)
	}
	if op.Error != nil {
		body.Error = &opErrorBody{Code: op.Error.Code, Message: op.Error.Message}
	}
	if !op.Done() {
		w.Header().Set("Retry-After", strconv.Itoa(a.cfg.RetryAfter))
	}
	writeJSON(w, http.StatusOK, body)
}

func (a *API) operationResult(w http.ResponseWriter, r *http.Request, op *model.Operation) {
	switch op.Status {
	case model.OpInProgress:
		w.Header().Set("Location", baseURL(r)+r.URL.RequestURI())
		w.Header().Set("Retry-After", strconv.Itoa(a.cfg.RetryAfter))
		w.WriteHeader(http.StatusAccepted)
		return
	case model.OpFailed, model.OpCanceled:
		e := errcatalog.Newf("InternalServerError", "The operation failed.")
		if op.Error != nil {
			e = &errcatalog.Error{Code: op.Error.Code, Status: op.Error.Status, Message: op.Error.Message}
		}
		errcatalog.Write(w, e)
		return
	}
	switch op.ResultKind {
	case "server":
		id, err := armid.ParseServerID(op.Resource)
		if err == nil {
			if srv, err := a.svc.GetServer(id); err == nil {
				writeJSON(w, http.StatusOK, a.renderServer(srv))
				return
			}
		}
	case "database":
		id, err := armid.ParseDatabaseID(op.Resource)
		if err == nil {
			if db, err := a.svc.GetDatabase(id); err == nil {
				srv, _ := a.svc.GetServer(id.Server)
				writeJSON(w, http.StatusOK, a.renderDatabase(db, srv))
				return
			}
		}
	case "failoverGroup":
		id, err := armid.ParseFailoverGroupID(op.Resource)
		if err == nil {
			if g, err := a.svc.GetGroup(id.Server, id.Name); err == nil {
				writeJSON(w, http.StatusOK, a.groupView(g, id.Server))
				return
			}
		}
	}
	w.WriteHeader(http.StatusNoContent)
}
