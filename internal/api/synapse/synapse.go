// Package synapse serves the Synapse data-plane contract for link connections and their linked services under
// /workspaces/{workspace}/ (api-version 2022-12-01-preview for link connections, 2020-12-01 for linked services;
// any workspace name, created implicitly; the same bearer token as the ARM API). Secrets are never returned.
// Extension: POST …/linkconnections/{name}/query {"query": "SQL"} runs a read-only query on the link's target.
package synapse

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
)

// API-versions served.
const (
	LinkAPIVersion          = "2022-12-01-preview"
	LinkedServiceAPIVersion = "2020-12-01"
)

// API is the handler.
type API struct {
	cat *links.Catalog
	mux *http.ServeMux
}

// New returns the handler (mount it under /workspaces/ behind the bearer token).
func New(cat *links.Catalog) *API {
	a := &API{cat: cat, mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /workspaces/{ws}/linkedservices", a.listLinkedServices)
	a.mux.HandleFunc("/workspaces/{ws}/linkedservices/{name}", a.linkedService)
	a.mux.HandleFunc("GET /workspaces/{ws}/linkconnections", a.listConnections)
	a.mux.HandleFunc("/workspaces/{ws}/linkconnections/{name}", a.connection)
	a.mux.HandleFunc("POST /workspaces/{ws}/linkconnections/{name}/{action}", a.action)
	a.mux.HandleFunc("GET /workspaces/{ws}/linkconnections/{name}/{action}", a.action)
	return a
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	want := LinkAPIVersion
	if strings.Contains(strings.ToLower(r.URL.Path), "/linkedservices") {
		want = LinkedServiceAPIVersion
	}
	switch v := r.URL.Query().Get("api-version"); {
	case v == "":
		errcatalog.Write(w, errcatalog.Newf("MissingApiVersionParameter", "The api-version query parameter (?api-version=%s) is required.", want))
		return
	case v != want && v != LinkAPIVersion && v != LinkedServiceAPIVersion:
		errcatalog.Write(w, errcatalog.Newf("InvalidApiVersionParameter", "The api-version '%s' is invalid. Supported: %s.", v, want))
		return
	}
	a.mux.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, v any) error {
	return decodeBody(r, v, false)
}

// decodeBody decodes a JSON body; an empty one is accepted when optional.
func decodeBody(r *http.Request, v any, optional bool) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return errcatalog.Newf("InvalidRequestContent", "The request body could not be read.")
	}
	if optional && len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			return errcatalog.Newf("InvalidRequestContent", "The value of '%s' must be %s, not a JSON %s.", typ.Field, typ.Type, typ.Value).WithTarget(typ.Field)
		}
		return errcatalog.Newf("InvalidRequestContent", "The request content was invalid and could not be deserialized: %v.", err)
	}
	return nil
}

func resourceID(ws, kind, name string) string { return "/workspaces/" + ws + "/" + kind + "/" + name }

// secret accepts a string or a SecureString {"type":"SecureString","value":"…"}.
type secret string

func (s *secret) UnmarshalJSON(b []byte) error {
	var str string
	if json.Unmarshal(b, &str) == nil {
		*s = secret(str)
		return nil
	}
	var ss struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(b, &ss); err != nil {
		return err
	}
	*s = secret(ss.Value)
	return nil
}

type linkedServiceBody struct {
	Properties struct {
		Type           string `json:"type"`
		TypeProperties struct {
			ConnectionString secret `json:"connectionString"`
			Path             string `json:"path"`
		} `json:"typeProperties"`
	} `json:"properties"`
}

func renderLinkedService(ls *links.LinkedService) map[string]any {
	tp := map[string]any{}
	if ls.Path != "" {
		tp["path"] = ls.Path
	}
	if ls.ConnectionString != "" {
		tp["connectionString"] = map[string]any{"type": "SecureString", "value": "**********"}
	}
	return map[string]any{"id": resourceID(ls.Workspace, "linkedservices", ls.Name), "name": ls.Name,
		"type": "Microsoft.Synapse/workspaces/linkedservices", "properties": map[string]any{"type": ls.Type, "typeProperties": tp}}
}

func (a *API) linkedService(w http.ResponseWriter, r *http.Request) {
	ws, name := r.PathValue("ws"), r.PathValue("name")
	switch r.Method {
	case http.MethodPut:
		var b linkedServiceBody
		if err := decode(r, &b); err != nil {
			errcatalog.Write(w, err)
			return
		}
		ls := links.LinkedService{Workspace: ws, Name: name, Type: b.Properties.Type,
			ConnectionString: string(b.Properties.TypeProperties.ConnectionString), Path: b.Properties.TypeProperties.Path}
		if err := a.cat.PutLinkedService(ls); err != nil {
			errcatalog.Write(w, err)
			return
		}
		writeJSON(w, http.StatusOK, renderLinkedService(&ls))
	case http.MethodGet:
		ls, err := a.cat.LinkedService(ws, name)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		writeJSON(w, http.StatusOK, renderLinkedService(ls))
	case http.MethodDelete:
		if err := a.cat.DeleteLinkedService(ws, name); err != nil {
			errcatalog.Write(w, err)
			return
		}
		w.WriteHeader(http.StatusOK)
	default:
		errcatalog.Write(w, errcatalog.Newf("UnsupportedHttpMethod", "The HTTP method '%s' is not supported for this resource.", r.Method))
	}
}

func (a *API) listLinkedServices(w http.ResponseWriter, r *http.Request) {
	all, err := a.cat.LinkedServices(r.PathValue("ws"))
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	out := []any{}
	for i := range all {
		out = append(out, renderLinkedService(&all[i]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"value": out})
}

type ref struct {
	ReferenceName string `json:"referenceName"`
}

type connectionBody struct {
	Description string `json:"description"`
	Properties  struct {
		SourceDatabase struct {
			LinkedService  ref `json:"linkedService"`
			TypeProperties struct {
				ResourceID string `json:"resourceId"`
			} `json:"typeProperties"`
		} `json:"sourceDatabase"`
		TargetDatabase struct {
			LinkedService  ref `json:"linkedService"`
			TypeProperties struct {
				CrossTableTransaction          bool `json:"crossTableTransaction"`
				DropExistingTargetTableOnStart bool `json:"dropExistingTargetTableOnStart"`
			} `json:"typeProperties"`
		} `json:"targetDatabase"`
		Compute struct {
			DataProcessIntervalMinutes int32 `json:"dataProcessIntervalMinutes"`
		} `json:"compute"`
	} `json:"properties"`
}

func renderConnection(lc *links.LinkConnection) map[string]any {
	return map[string]any{
		"id": resourceID(lc.Workspace, "linkconnections", lc.Name), "name": lc.Name,
		"type": "Microsoft.Synapse/workspaces/linkconnections", "description": lc.Description,
		"properties": map[string]any{
			"sourceDatabase": map[string]any{
				"linkedService":  map[string]any{"referenceName": lc.SourceService, "type": "LinkedServiceReference"},
				"typeProperties": map[string]any{"resourceId": lc.SourceResourceID},
			},
			"targetDatabase": map[string]any{
				"linkedService": map[string]any{"referenceName": lc.TargetService, "type": "LinkedServiceReference"},
				"typeProperties": map[string]any{"crossTableTransaction": lc.CrossTable,
					"dropExistingTargetTableOnStart": lc.DropExisting},
			},
			"compute": map[string]any{"dataProcessIntervalMinutes": lc.IntervalMinutes},
		},
	}
}

func (a *API) connection(w http.ResponseWriter, r *http.Request) {
	ws, name := r.PathValue("ws"), r.PathValue("name")
	switch r.Method {
	case http.MethodPut:
		var b connectionBody
		if err := decode(r, &b); err != nil {
			errcatalog.Write(w, err)
			return
		}
		p := b.Properties
		if p.SourceDatabase.LinkedService.ReferenceName == "" || p.TargetDatabase.LinkedService.ReferenceName == "" {
			errcatalog.Write(w, errcatalog.Newf("InvalidParameterValue", "sourceDatabase.linkedService and targetDatabase.linkedService are required."))
			return
		}
		lc, err := a.cat.PutConnection(links.LinkConnection{Workspace: ws, Name: name, Description: b.Description,
			SourceService: p.SourceDatabase.LinkedService.ReferenceName, SourceResourceID: p.SourceDatabase.TypeProperties.ResourceID,
			TargetService: p.TargetDatabase.LinkedService.ReferenceName, CrossTable: p.TargetDatabase.TypeProperties.CrossTableTransaction,
			DropExisting: p.TargetDatabase.TypeProperties.DropExistingTargetTableOnStart, IntervalMinutes: p.Compute.DataProcessIntervalMinutes})
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		writeJSON(w, http.StatusOK, renderConnection(lc))
	case http.MethodGet:
		lc, err := a.cat.Connection(ws, name)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		writeJSON(w, http.StatusOK, renderConnection(lc))
	case http.MethodDelete:
		if err := a.cat.Delete(ws, name); err != nil {
			errcatalog.Write(w, err)
			return
		}
		w.WriteHeader(http.StatusOK)
	default:
		errcatalog.Write(w, errcatalog.Newf("UnsupportedHttpMethod", "The HTTP method '%s' is not supported for this resource.", r.Method))
	}
}

func (a *API) listConnections(w http.ResponseWriter, r *http.Request) {
	all, err := a.cat.Connections(r.PathValue("ws"))
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	out := []any{}
	for i := range all {
		out = append(out, renderConnection(&all[i]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"value": out})
}

type tableSide struct {
	TableName  string `json:"tableName"`
	SchemaName string `json:"schemaName"`
}

type editTablesBody struct {
	LinkTables []struct {
		ID            string    `json:"id"`
		Source        tableSide `json:"source"`
		Target        tableSide `json:"target"`
		OperationType string    `json:"operationType"`
	} `json:"linkTables"`
}

func renderTables(lc *links.LinkConnection) map[string]any {
	out := []any{}
	for _, t := range lc.Tables {
		out = append(out, map[string]any{"id": t.ID, "name": t.ID,
			"source": map[string]any{"tableName": t.SourceTable, "schemaName": t.SourceSchema},
			"target": map[string]any{"tableName": t.TargetTable, "schemaName": t.TargetSchema}})
	}
	return map[string]any{"value": out}
}

func (a *API) action(w http.ResponseWriter, r *http.Request) {
	ws, name, action := r.PathValue("ws"), r.PathValue("name"), strings.ToLower(r.PathValue("action"))
	var err error
	switch {
	case action == "start" && r.Method == http.MethodPost:
		err = a.cat.Start(ws, name)
	case action == "stop" && r.Method == http.MethodPost:
		err = a.cat.Stop(ws, name)
	case (action == "pause" || action == "resume") && r.Method == http.MethodPost:
		if action == "pause" {
			err = a.cat.Stop(ws, name)
		} else {
			err = a.cat.Start(ws, name)
		}
	case action == "edittables" && r.Method == http.MethodPost:
		var b editTablesBody
		if err := decode(r, &b); err != nil {
			errcatalog.Write(w, err)
			return
		}
		var edits []links.LinkTable
		var ops []string
		for _, t := range b.LinkTables {
			id := t.ID
			if id == "" {
				id = t.Source.SchemaName + "." + t.Source.TableName
			}
			edits = append(edits, links.LinkTable{ID: id, SourceSchema: t.Source.SchemaName, SourceTable: t.Source.TableName,
				TargetSchema: t.Target.SchemaName, TargetTable: t.Target.TableName})
			ops = append(ops, t.OperationType)
		}
		_, err = a.cat.EditTables(ws, name, edits, ops)
	case action == "linktables" && r.Method == http.MethodGet:
		lc, err := a.cat.Connection(ws, name)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		writeJSON(w, http.StatusOK, renderTables(lc))
		return
	case action == "querytablestatus" && r.Method == http.MethodPost:
		a.queryTableStatus(w, r, ws, name)
		return
	case action == "detailedstatus" && r.Method == http.MethodGet:
		a.detailedStatus(w, ws, name)
		return
	case action == "query" && r.Method == http.MethodPost:
		a.query(w, r, ws, name)
		return
	default:
		errcatalog.Write(w, errcatalog.Newf("ResourceNotFound", "No action '%s %s' on link connections.", r.Method, action))
		return
	}
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// detailedStatus reports facts: whether the link streams and applies, its checkpoint and last commit, errors.
func (a *API) detailedStatus(w http.ResponseWriter, ws, name string) {
	lc, err := a.cat.Connection(ws, name)
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	out := map[string]any{"id": resourceID(ws, "linkconnections", name), "name": name, "status": "Stopped",
		"isApplyingChanges": false, "isPartiallyFailed": false}
	if !lc.StartTime.IsZero() {
		out["startTime"] = lc.StartTime.Format(time.RFC3339Nano)
	}
	if !lc.StopTime.IsZero() {
		out["stopTime"] = lc.StopTime.Format(time.RFC3339Nano)
	}
	if g := a.cat.SourceGroup(lc); g != "" {
		out["sourceFailoverGroup"] = g // extension: the link follows this group's primary
	}
	// Extension: the WAL the link's slot holds on its source (whether the link runs or not); unreserved means
	// beyond max_slot_wal_keep_size, and the next checkpoint may invalidate the slot.
	if sw, err := a.cat.SlotWAL(lc); err == nil && sw.Exists {
		out["retainedWalBytes"], out["walStatus"] = sw.RetainedBytes, sw.WALStatus
		if sw.WALStatus == "unreserved" {
			out["warning"] = map[string]any{"message": "The link's replication slot holds more WAL than the source's max_slot_wal_keep_size: " +
				"the next checkpoint may invalidate it, and the link would then resynchronise every table."}
		}
	}
	if st, runsOn, ok := a.cat.StatusAt(ws, name); ok {
		switch {
		case st.Phase == "Failed":
			out["status"] = "Failed"
		case st.Phase == "Streaming" && st.Err == "":
			out["status"], out["isApplyingChanges"] = "Running", true
		case st.Phase == "Streaming":
			out["status"] = "Running" // streaming but waiting (e.g. for the geo-secondary): the error says why
		case st.Phase == "Idle":
			out["status"] = "Running" // batch mode (dataProcessIntervalMinutes), between two batches
		default:
			out["status"] = "Starting"
		}
		for _, t := range st.Tables {
			if t.Status == link.TableFailed && st.Phase != "Failed" { // some tables failed, the link runs
				out["isPartiallyFailed"] = true
			}
		}
		if st.Err != "" {
			out["error"] = map[string]any{"message": st.Err}
		}
		if runsOn != "" {
			out["runsOn"] = runsOn // cluster mode: the controller whose process runs the link (holds its lease)
		}
		out["checkpointLsn"] = st.Checkpoint.String()
		if !st.LastHeard.IsZero() {
			out["lastSourceHeartbeatTime"] = st.LastHeard.UTC().Format(time.RFC3339Nano)
		}
		out["appliedTransactions"] = st.Applied
		out["spooledTransactions"] = st.Spooled // of those, too large for memory: applied from a spool file
		if !st.LastCommit.IsZero() {
			out["lastSourceCommitTime"] = st.LastCommit.Format(time.RFC3339Nano)
			out["lastAppliedTime"] = st.LastApplied.Format(time.RFC3339Nano)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// queryTableStatus reports each linked table's status (LinkConnectionQueryTableStatus), from the running link's
// facts; a stopped link's tables are "Stopped".
func (a *API) queryTableStatus(w http.ResponseWriter, r *http.Request, ws, name string) {
	var b struct {
		MaxSegmentCount   int `json:"maxSegmentCount"`
		ContinuationToken *struct {
			Offset int `json:"offset"`
		} `json:"continuationToken"`
	}
	if err := decodeBody(r, &b, true); err != nil {
		errcatalog.Write(w, err)
		return
	}
	if b.MaxSegmentCount < 0 || b.MaxSegmentCount > 1000 {
		errcatalog.Write(w, errcatalog.Newf("InvalidParameterValue", "maxSegmentCount must be between 1 and 1000.").WithTarget("maxSegmentCount"))
		return
	}
	lc, err := a.cat.Connection(ws, name)
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	st, running := a.cat.Status(ws, name)
	byID := map[string]link.TableStatus{}
	for _, t := range st.Tables {
		byID[t.ID] = t
	}
	out := []any{}
	var next any
	from := 0
	if b.ContinuationToken != nil {
		from = min(max(b.ContinuationToken.Offset, 0), len(lc.Tables))
	}
	for i, t := range lc.Tables[from:] {
		if b.MaxSegmentCount > 0 && len(out) == b.MaxSegmentCount {
			next = map[string]any{"offset": from + i}
			break
		}
		ts, ok := byID[t.ID]
		row := map[string]any{"id": t.ID, "linkTableId": t.ID, "status": "Stopped"}
		if !lc.StartTime.IsZero() {
			row["startTime"] = lc.StartTime.Format(time.RFC3339Nano)
		}
		if !lc.StopTime.IsZero() && !lc.Running {
			row["stopTime"] = lc.StopTime.Format(time.RFC3339Nano)
		}
		if running && !ok && st.Phase == "Failed" {
			ts, ok = link.TableStatus{ID: t.ID, Status: link.TableFailed, Err: st.Err}, true // a link that could not be started
		}
		if running && ok {
			row["status"] = ts.Status
			if ts.Err != "" {
				row["errorMessage"], row["errorCode"] = ts.Err, "TableFailed"
				if st.Phase == "Failed" && ts.Err == st.Err {
					row["errorCode"] = "LinkFailed" // the table failed because its link did
				}
			}
			if ts.Resync != "" {
				row["resyncReason"] = ts.Resync
			}
			if ts.SyncedAt != 0 {
				row["snapshotLsn"] = ts.SyncedAt.String()
			}
			if !ts.LastApplied.IsZero() {
				row["lastProcessedData"] = ts.LastApplied.UTC().Format(time.RFC3339Nano)
			}
			if !ts.LastCommit.IsZero() {
				row["lastTransactionCommitTime"] = ts.LastCommit.UTC().Format(time.RFC3339Nano)
			}
		}
		out = append(out, row)
	}
	writeJSON(w, http.StatusOK, map[string]any{"value": out, "continuationToken": next})
}

func (a *API) query(w http.ResponseWriter, r *http.Request, ws, name string) {
	var b struct {
		Query          string `json:"query"`
		MaxRows        *int   `json:"maxRows"`
		TimeoutSeconds *int   `json:"timeoutSeconds"`
	}
	if err := decode(r, &b); err != nil {
		errcatalog.Write(w, err)
		return
	}
	req := target.QueryRequest{SQL: b.Query}
	switch {
	case strings.TrimSpace(b.Query) == "":
		errcatalog.Write(w, errcatalog.Newf("InvalidParameterValue", "query is required.").WithTarget("query"))
		return
	case strings.ContainsRune(b.Query, 0):
		errcatalog.Write(w, errcatalog.Newf("InvalidParameterValue", "query may not contain NUL characters.").WithTarget("query"))
		return
	case b.MaxRows != nil && (*b.MaxRows < 1 || *b.MaxRows > target.MaxQueryRows):
		errcatalog.Write(w, errcatalog.Newf("InvalidParameterValue", "maxRows must be between 1 and %d.", target.MaxQueryRows).WithTarget("maxRows"))
		return
	case b.TimeoutSeconds != nil && (*b.TimeoutSeconds < 1 || *b.TimeoutSeconds > int(target.MaxQueryTimeout/time.Second)):
		errcatalog.Write(w, errcatalog.Newf("InvalidParameterValue", "timeoutSeconds must be between 1 and %d.", int(target.MaxQueryTimeout/time.Second)).WithTarget("timeoutSeconds"))
		return
	}
	if b.MaxRows != nil {
		req.MaxRows = *b.MaxRows
	}
	if b.TimeoutSeconds != nil {
		req.Timeout = time.Duration(*b.TimeoutSeconds) * time.Second
	}
	res, err := a.cat.Query(r.Context(), ws, name, req)
	if err != nil {
		errcatalog.Write(w, queryError(err))
		return
	}
	rows := res.Rows
	if rows == nil {
		rows = [][]any{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"columns": res.Columns, "rows": rows, "rowCount": len(rows),
		"truncated": res.Truncated, "maxRows": res.MaxRows, "timeoutSeconds": int(res.Timeout / time.Second)})
}

// queryError turns a query's failure into the answer: a refused query or one that ran out of time is the caller's
// 400, as is any error the target gave.
func queryError(err error) error {
	if _, ok := errcatalog.As(err); ok {
		return err
	}
	var refused *target.RefusedError
	var timeout *target.TimeoutError
	switch {
	case errors.As(err, &refused):
		return errcatalog.Newf("InvalidParameterValue", "The query was refused: %s.", refused.Reason).WithTarget("query")
	case errors.As(err, &timeout):
		return errcatalog.Newf("InvalidParameterValue", "The query ran longer than its limit of %s and was cancelled; pass a larger timeoutSeconds (at most %d) or narrow the query.",
			timeout.Limit, int(target.MaxQueryTimeout/time.Second)).WithTarget("query")
	}
	return errcatalog.Newf("InvalidParameterValue", "The query failed on the target: %v", err).WithTarget("query")
}
