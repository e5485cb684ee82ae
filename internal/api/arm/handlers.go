package arm

import (
	"net/http"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/controlplane/validate"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

func (a *API) listServers(w http.ResponseWriter, r *http.Request, p path) {
	servers, err := a.svc.ListServers(p.sub, p.rg)
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	out := list{Value: []any{}}
	for i := range servers {
		out.Value = append(out.Value, a.renderServer(&servers[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) server(w http.ResponseWriter, r *http.Request, p path) {
	id, err := p.serverID()
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	switch r.Method {
	case http.MethodGet:
		srv, err := a.svc.GetServer(id)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		writeJSON(w, http.StatusOK, a.renderServer(srv))
	case http.MethodPut:
		body, err := readBody(r)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		_, getErr := a.svc.GetServer(id)
		spec, err := validate.ServerPut(body, getErr == nil)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		srv, res, err := a.svc.PutServer(r.Context(), id, spec)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		a.acceptOperation(w, r, res.Op, createdStatus(res), a.renderServer(srv))
	case http.MethodDelete:
		res, err := a.svc.DeleteServer(id)
		a.writeDelete(w, r, res, err)
	default:
		a.onlyMethods(w, r, http.MethodGet, http.MethodPut, http.MethodDelete)
	}
}

func createdStatus(res service.Result) int {
	if res.Created {
		return http.StatusCreated
	}
	return http.StatusOK
}

// writeDelete answers a DELETE: 202 with operation headers, or 204 when there was nothing to delete.
func (a *API) writeDelete(w http.ResponseWriter, r *http.Request, res service.Result, err error) {
	switch {
	case err != nil:
		errcatalog.Write(w, err)
	case res.Op == nil:
		w.WriteHeader(http.StatusNoContent)
	default:
		a.acceptOperation(w, r, res.Op, http.StatusAccepted, nil)
	}
}

func (a *API) database(w http.ResponseWriter, r *http.Request, p path) {
	sid, err := p.serverID()
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	if p.list {
		if !a.onlyMethods(w, r, http.MethodGet) {
			return
		}
		dbs, err := a.svc.ListDatabases(sid)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		srv, _ := a.svc.GetServer(sid)
		out := list{Value: []any{}}
		for i := range dbs {
			out.Value = append(out.Value, a.renderDatabase(&dbs[i], srv))
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	if p.action != "" {
		errcatalog.Write(w, errcatalog.Newf("ResourceNotFound", "The database action '%s' is not served by fogo.", p.action))
		return
	}
	id := armid.DatabaseID{Server: sid, Name: p.name}
	if err := armid.ValidateDatabaseName(p.name); err != nil && r.Method == http.MethodPut {
		errcatalog.Write(w, err)
		return
	}
	switch r.Method {
	case http.MethodGet:
		db, err := a.svc.GetDatabase(id)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		srv, _ := a.svc.GetServer(sid)
		writeJSON(w, http.StatusOK, a.renderDatabase(db, srv))
	case http.MethodPut:
		body, err := readBody(r)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		spec, err := validate.DatabasePut(body)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		db, res, err := a.svc.PutDatabase(id, spec)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		srv, _ := a.svc.GetServer(sid)
		status := createdStatus(res)
		if res.Created {
			status = http.StatusAccepted
		}
		a.acceptOperation(w, r, res.Op, status, a.renderDatabase(db, srv))
	case http.MethodDelete:
		res, err := a.svc.DeleteDatabase(id)
		a.writeDelete(w, r, res, err)
	default:
		a.onlyMethods(w, r, http.MethodGet, http.MethodPut, http.MethodDelete)
	}
}

// groupView renders a group from one server with its partner and observed state.
func (a *API) groupView(g *model.FailoverGroup, from armid.ServerID) resource {
	fromSrv, _ := a.svc.GetServer(from)
	partnerSrv, _ := a.svc.GetServer(g.PartnerOf(from))
	return a.renderGroup(g, from, fromSrv, partnerSrv, a.svc.ReplicationState(g))
}

func (a *API) failoverGroup(w http.ResponseWriter, r *http.Request, p path) {
	sid, err := p.serverID()
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	if p.list {
		if !a.onlyMethods(w, r, http.MethodGet) {
			return
		}
		groups, err := a.svc.ListGroups(sid)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		out := list{Value: []any{}}
		for i := range groups {
			out.Value = append(out.Value, a.groupView(&groups[i], sid))
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	if p.action == "losttransactions" {
		a.lostTransactions(w, r, sid, p)
		return
	}
	if p.action != "" {
		a.failoverAction(w, r, sid, p)
		return
	}
	switch r.Method {
	case http.MethodGet:
		g, err := a.svc.GetGroup(sid, p.name)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		writeJSON(w, http.StatusOK, a.groupView(g, sid))
	case http.MethodPut, http.MethodPatch:
		a.putGroup(w, r, sid, p.name)
	case http.MethodDelete:
		res, err := a.svc.DeleteGroup(sid, p.name)
		a.writeDelete(w, r, res, err)
	default:
		a.onlyMethods(w, r, http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodDelete)
	}
}

func (a *API) putGroup(w http.ResponseWriter, r *http.Request, sid armid.ServerID, name string) {
	if err := armid.ValidateFailoverGroupName(name); err != nil {
		errcatalog.Write(w, err)
		return
	}
	body, err := readBody(r)
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	minGrace := a.svc.Config().MinGraceMinutes
	var spec validate.FailoverGroupSpec
	if r.Method == http.MethodPatch {
		g, gerr := a.svc.GetGroup(sid, name)
		if gerr != nil {
			errcatalog.Write(w, gerr)
			return
		}
		if g.RoleOf(sid) == "Secondary" {
			errcatalog.Write(w, errcatalog.New("FailoverGroupUpdateOrDeleteRequestOnSecondary"))
			return
		}
		spec, err = validate.FailoverGroupUpdate(body, sid, service.CurrentSpec(g), minGrace)
	} else {
		spec, err = validate.FailoverGroupPut(body, sid, minGrace)
	}
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	g, res, err := a.svc.PutGroup(sid, name, spec)
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	status := createdStatus(res)
	if r.Method == http.MethodPatch {
		status = http.StatusAccepted
	}
	a.acceptOperation(w, r, res.Op, status, a.groupView(g, sid))
}

func (a *API) failoverAction(w http.ResponseWriter, r *http.Request, sid armid.ServerID, p path) {
	kinds := map[string]string{
		"failover":                       model.OpPlanned,
		"forcefailoverallowdataloss":     model.OpForced,
		"tryplannedbeforeforcedfailover": model.OpTryPlanned,
	}
	kind, ok := kinds[p.action]
	if !ok {
		errcatalog.Write(w, errcatalog.Newf("ResourceNotFound", "The failover group action '%s' does not exist.", p.action))
		return
	}
	if !a.onlyMethods(w, r, http.MethodPost) {
		return
	}
	res, err := a.svc.Failover(sid, p.name, kind)
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	a.acceptOperation(w, r, res.Op, http.StatusAccepted, nil)
}
