package arm

import (
	"io"
	"net/http"
	"strings"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// maxBody bounds request bodies.
const maxBody = 1 << 20

// path is a parsed ARM request path below /subscriptions.
type path struct {
	sub, rg                string
	server, child, name    string // child: "databases" | "failovergroups" | ""
	action                 string // failover, forcefailoverallowdataloss, trypannedbeforeforcedfailover, losttransactions
	report                 string // losttransactions/{report}: a forced failover's operation ID
	list                   bool   // a collection
	opKind, opID, location string // operation status / result
}

// parsePath understands the Microsoft.Sql paths fogo serves (fixed segments are case-insensitive, as in ARM).
func parsePath(p string) (path, bool) {
	seg := strings.Split(strings.Trim(p, "/"), "/")
	var out path
	eq := func(i int, want string) bool { return i < len(seg) && strings.EqualFold(seg[i], want) }
	if !eq(0, "subscriptions") || len(seg) < 2 {
		return out, false
	}
	out.sub = seg[1]
	i := 2
	if eq(i, "resourceGroups") && len(seg) > i+1 {
		out.rg = seg[i+1]
		i += 2
	}
	if !eq(i, "providers") || !eq(i+1, "Microsoft.Sql") {
		return out, false
	}
	i += 2
	rest := seg[i:]
	switch {
	case len(rest) == 4 && strings.EqualFold(rest[0], "locations"):
		out.location, out.opKind, out.opID = rest[1], strings.ToLower(rest[2]), rest[3]
		return out, strings.HasSuffix(out.opKind, "azureasyncoperation") || strings.HasSuffix(out.opKind, "operationresults")
	case len(rest) >= 1 && strings.EqualFold(rest[0], "servers"):
	default:
		return out, false
	}
	switch len(rest) {
	case 1:
		out.list = true
	case 2:
		out.server = rest[1]
	case 3:
		out.server, out.child, out.list = rest[1], strings.ToLower(rest[2]), true
	case 4:
		out.server, out.child, out.name = rest[1], strings.ToLower(rest[2]), rest[3]
	case 5:
		out.server, out.child, out.name, out.action = rest[1], strings.ToLower(rest[2]), rest[3], strings.ToLower(rest[4])
	case 6:
		if !strings.EqualFold(rest[4], "lostTransactions") {
			return out, false
		}
		out.server, out.child, out.name, out.action, out.report = rest[1], strings.ToLower(rest[2]), rest[3], "losttransactions", rest[5]
	default:
		return out, false
	}
	if out.server != "" && out.rg == "" {
		return out, false
	}
	if out.child != "" && out.child != "databases" && out.child != "failovergroups" {
		return out, false
	}
	if out.action == "losttransactions" && out.child != "failovergroups" {
		return out, false
	}
	return out, true
}

func (a *API) route(w http.ResponseWriter, r *http.Request) {
	p, ok := parsePath(r.URL.Path)
	if !ok {
		errcatalog.Write(w, errcatalog.Newf("ResourceNotFound", "The resource path '%s' is not served by fogo.", r.URL.Path))
		return
	}
	if p.opID == "" {
		if err := checkAPIVersion(r); err != nil {
			errcatalog.Write(w, err)
			return
		}
	}
	if err := armid.ValidateSubscription(p.sub); err != nil {
		errcatalog.Write(w, err)
		return
	}
	if p.rg != "" {
		if err := armid.ValidateResourceGroup(p.rg); err != nil {
			errcatalog.Write(w, err)
			return
		}
	}
	switch {
	case p.opID != "":
		a.operation(w, r, p)
	case p.server == "":
		if a.onlyMethods(w, r, http.MethodGet) {
			a.listServers(w, r, p)
		}
	case p.child == "" && !p.list:
		a.server(w, r, p)
	case p.child == "databases":
		a.database(w, r, p)
	default:
		a.failoverGroup(w, r, p)
	}
}

// onlyMethods answers 405 unless the request uses one of the methods.
func (a *API) onlyMethods(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	errcatalog.Write(w, errcatalog.Newf("UnsupportedHttpMethod", "The HTTP method '%s' is not supported for this resource.", r.Method))
	return false
}

func readBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, errcatalog.Newf("InvalidRequestContent", "The request content could not be read: %v", err)
	}
	if len(body) > maxBody {
		return nil, errcatalog.Newf("InvalidRequestContent", "The request content is larger than %d bytes.", maxBody)
	}
	return body, nil
}

func (p path) serverID() (armid.ServerID, error) {
	id := armid.ServerID{Subscription: p.sub, ResourceGroup: p.rg, Name: p.server}
	return id, armid.ValidateServerID(id)
}
