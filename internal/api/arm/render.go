package arm

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type resource struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Type       string            `json:"type"`
	Location   string            `json:"location,omitempty"`
	Kind       string            `json:"kind,omitempty"`
	Tags       map[string]string `json:"tags,omitempty"`
	SKU        any               `json:"sku,omitempty"`
	Properties any               `json:"properties"`
}

type list struct {
	Value []any `json:"value"`
}

func (a *API) endpoint(port int) string {
	hosts := []string{a.cfg.AdvertiseHost}
	if a.cfg.EndpointHosts != nil {
		if h := a.cfg.EndpointHosts(); len(h) > 0 {
			hosts = h
		}
	}
	eps := make([]string, len(hosts))
	for i, h := range hosts {
		eps[i] = net.JoinHostPort(h, strconv.Itoa(port))
	}
	return strings.Join(eps, ",")
}

func (a *API) renderServer(s *model.Server) resource {
	props := map[string]any{
		"administratorLogin":       s.AdminLogin,
		"version":                  "12.0",
		"state":                    s.State,
		"fullyQualifiedDomainName": a.cfg.AdvertiseHost,
		"publicNetworkAccess":      "Enabled",
		"endpoint":                 a.endpoint(s.GatewayPort),
		"postgresVersion":          s.Version,
	}
	if s.Host != "" {
		props["host"] = s.Host // cluster mode: the agent whose host runs the server's instances
	}
	return resource{
		ID: s.ID.String(), Name: s.ID.Name, Type: "Microsoft.Sql/servers", Location: s.Location, Kind: "v12.0", Tags: s.Tags,
		Properties: props,
	}
}

func (a *API) renderDatabase(d *model.Database, srv *model.Server) resource {
	props := map[string]any{
		"status":       d.Status,
		"databaseId":   d.DatabaseID,
		"creationDate": d.CreatedAt.Format(time.RFC3339),
		"collation":    orDefault(d.Collation, "C.UTF-8"),
	}
	if srv != nil {
		props["endpoint"] = a.endpoint(srv.GatewayPort)
	}
	if d.Group != "" {
		props["failoverGroupId"] = d.Group
	}
	if d.GeoSecondary {
		props["secondaryType"] = "Geo"
	}
	res := resource{
		ID: d.ID.String(), Name: d.ID.Name, Type: "Microsoft.Sql/servers/databases", Location: d.Location,
		Tags: d.Tags, Kind: "v12.0,user", Properties: props,
	}
	if d.SKUName != "" {
		res.SKU = map[string]string{"name": d.SKUName}
	}
	return res
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// renderGroup shows a group as seen from one of its servers.
func (a *API) renderGroup(g *model.FailoverGroup, from armid.ServerID, fromSrv, partnerSrv *model.Server, state string) resource {
	partner := g.PartnerOf(from)
	rw := map[string]any{"failoverPolicy": g.ReadWritePolicy}
	if g.GraceMinutes != nil {
		rw["failoverWithDataLossGracePeriodMinutes"] = *g.GraceMinutes
	}
	if g.RWPort != 0 {
		rw["endpoint"] = a.endpoint(g.RWPort) // extension: the read-write listener
	}
	ro := map[string]any{"failoverPolicy": g.ReadOnlyPolicy}
	if g.ROPort != 0 {
		ro["endpoint"] = a.endpoint(g.ROPort) // extension: the read-only listener
	}
	if g.ReadOnlyTarget != "" {
		ro["targetServer"] = g.ReadOnlyTarget
	}
	partnerInfo := map[string]any{"id": partner.String(), "replicationRole": g.RoleOf(partner)}
	if partnerSrv != nil {
		partnerInfo["location"] = partnerSrv.Location
	}
	dbs := []string{}
	for _, d := range g.Databases {
		dbs = append(dbs, armid.DatabaseID{Server: from, Name: d.Name}.String())
	}
	props := map[string]any{
		"readWriteEndpoint": rw,
		"readOnlyEndpoint":  ro,
		"replicationRole":   g.RoleOf(from),
		"replicationState":  state,
		"partnerServers":    []any{partnerInfo},
		"databases":         dbs,
	}
	if g.SecondaryType != "" {
		props["secondaryType"] = g.SecondaryType
	}
	if !g.LastFailoverAt.IsZero() {
		// extension: the last failover, and who asked for it ("user" or "Automatic policy")
		props["lastFailover"] = map[string]any{"kind": g.LastFailoverKind, "time": g.LastFailoverAt.Format(time.RFC3339Nano),
			"initiatedBy": g.LastFailoverBy, "operationId": g.LastFailoverOp}
	}
	loc := ""
	if fromSrv != nil {
		loc = fromSrv.Location
	}
	return resource{
		ID: from.String() + "/failoverGroups/" + g.Name, Name: g.Name, Type: "Microsoft.Sql/servers/failoverGroups",
		Location: loc, Tags: g.Tags, Properties: props,
	}
}

// baseURL returns scheme://host of the request, for absolute operation URLs.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if fp := r.Header.Get("X-Forwarded-Proto"); fp == "https" || fp == "http" {
		scheme = fp
	}
	return scheme + "://" + r.Host
}

// acceptOperation writes the LRO headers for op and the status with an optional body.
func (a *API) acceptOperation(w http.ResponseWriter, r *http.Request, op *model.Operation, status int, body any) {
	if op != nil {
		sub, rg := "", ""
		if p, ok := parsePath(r.URL.Path); ok {
			sub, rg = p.sub, p.rg
		}
		base := fmt.Sprintf("%s/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Sql/locations/%s", baseURL(r), sub, rg, op.Location)
		kind := operationNoun(op)
		q := "?api-version=" + r.URL.Query().Get("api-version")
		w.Header().Set("Azure-AsyncOperation", base+"/"+kind+"AzureAsyncOperation/"+op.ID+q)
		w.Header().Set("Location", base+"/"+kind+"OperationResults/"+op.ID+q)
		w.Header().Set("Retry-After", strconv.Itoa(a.cfg.RetryAfter))
	}
	if body == nil {
		w.WriteHeader(status)
		return
	}
	writeJSON(w, status, body)
}

func operationNoun(op *model.Operation) string {
	switch op.Kind {
	case model.OpCreateServer, model.OpDeleteServer:
		return "server"
	case model.OpCreateDatabase, model.OpDeleteDatabase:
		return "database"
	}
	return "failoverGroup"
}
