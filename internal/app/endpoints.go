package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/gateway"
)

// gatewayEndpoints opens one gateway endpoint per logical server; it routes by database name to that server's
// instance of the database (primary or geo-secondary, whatever role it has now).
type gatewayEndpoints struct {
	mgr *gateway.Manager
	svc *service.Service
	log *slog.Logger
}

func newGatewayEndpoints(log *slog.Logger) *gatewayEndpoints {
	return &gatewayEndpoints{mgr: gateway.NewManager(gateway.Config{Logger: log}), log: log}
}

func endpointName(id armid.ServerID) string { return "server:" + id.Key() }

// OpenServer opens the server's endpoint on its leased port (idempotent).
func (g *gatewayEndpoints) OpenServer(srv *model.Server) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.GatewayPort))
	_, err := g.mgr.Open(endpointName(srv.ID), addr, serverResolver{svc: g.svc, server: srv.ID})
	if err != nil {
		return fmt.Errorf("open endpoint of server %s on %s: %w", srv.ID.Name, addr, err)
	}
	return nil
}

// CloseServer closes the server's endpoint and its sessions.
func (g *gatewayEndpoints) CloseServer(srv *model.Server) { g.mgr.Close(endpointName(srv.ID)) }

// CloseAll closes every endpoint.
func (g *gatewayEndpoints) CloseAll() { g.mgr.CloseAll() }

type serverResolver struct {
	svc    *service.Service
	server armid.ServerID
}

func (r serverResolver) Resolve(_ context.Context, database string) (string, error) {
	port, status, err := r.svc.ResolveDatabase(r.server, database)
	switch {
	case errors.Is(err, service.ErrUnknownDatabase):
		return "", &gateway.RouteError{Code: "3D000", Message: fmt.Sprintf("database %q does not exist on server %q", database, r.server.Name)}
	case err != nil:
		return "", &gateway.RouteError{Code: "58000", Message: "fogo could not resolve the database"}
	case status != model.DBOnline:
		return "", &gateway.RouteError{Code: "57P03", Message: fmt.Sprintf("database %q is %s", database, status)}
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}
