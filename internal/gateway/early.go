package gateway

// Early sessions: while a failover holds a listener's new read-write sessions, a session that waits would, once
// released, still have to open its session on the new primary: its startup and its authentication, a few round
// trips each across a region, all inside the clients' write gap. A resolver that can name where the session will
// most likely go (the geo-secondary being promoted) lets the gateway open the session there at once: the client
// authenticates against the standby (a physical copy: the same roles and passwords) while the failover runs, and
// the backend's answers from AuthenticationOk on (its parameters, its cancel key, ReadyForQuery) are held back
// until the resolver confirms the route. A session a hot standby started becomes read-write when the standby is
// promoted (PostgreSQL decides at each transaction), and by the confirmation the promotion is done: the client
// gets in_hot_standby=off. If the failover ended elsewhere (undone), the client gets the resolver's error and
// connects again.

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"time"
)

// EarlyResolver is a Resolver that may name, while it would make a session wait, the backend the session will
// most likely go to.
type EarlyResolver interface {
	// ResolveEarly returns that backend and confirm, which waits for the route to be decided and returns nil
	// when it is addr (a *RouteError for the client otherwise); ok is false when there is no early route now.
	ResolveEarly(ctx context.Context, database string) (addr string, confirm func(context.Context) error, ok bool)
}

// earlyGate holds back a session's answers from AuthenticationOk on until its route is confirmed.
type earlyGate struct {
	confirm   func(context.Context) error
	confirmed bool
	// onConfirm, when set, is called once the route is confirmed (the session may be cut from then on).
	onConfirm func()
}

// connectEarly opens the session on the early route, if the resolver has one and that backend takes it.
func (e *Endpoint) connectEarly(ctx context.Context, database string, startup []byte) (net.Conn, string, []byte, *earlyGate, bool) {
	er, ok := e.resolver.(EarlyResolver)
	if !ok {
		return nil, "", nil, nil, false
	}
	addr, confirm, ok := er.ResolveEarly(ctx, database)
	if !ok {
		return nil, "", nil, nil, false
	}
	backend, first, err := e.dialStartup(addr, startup)
	if err != nil || cannotConnectNow(first) {
		if backend != nil {
			backend.Close()
		}
		e.cfg.Logger.Debug("gateway: no early session", "backend", addr, "err", err, "answer", string(first))
		return nil, "", nil, nil, false
	}
	return backend, addr, first, &earlyGate{confirm: confirm}, true
}

// forwardStartup sends one backend message of the startup phase to the client: an AuthenticationSASL offer
// without channel binding, and, on an early session, nothing from AuthenticationOk on before its route is
// confirmed (a refusal then goes to the client instead, and ends the session).
func (e *Endpoint) forwardStartup(client net.Conn, msg []byte, g *earlyGate) error {
	if g != nil && !g.confirmed && isAuthOK(msg) {
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.ResolveTimeout)
		start := time.Now()
		err := g.confirm(ctx)
		cancel()
		e.cfg.Logger.Debug("gateway: early session", "waited", time.Since(start).Round(time.Millisecond), "err", err)
		if err != nil {
			var re *RouteError
			if !errors.As(err, &re) {
				re = &RouteError{Code: "57P03", Message: "fogo gateway: " + err.Error()}
			}
			e.refuse(client, re.Code, re.Message)
			return err
		}
		g.confirmed = true
		if g.onConfirm != nil {
			g.onConfirm()
		}
	}
	if g != nil && g.confirmed {
		msg = leftHotStandby(msg)
	}
	_, err := client.Write(withoutChannelBinding(msg))
	return err
}

// isAuthOK reports whether msg is AuthenticationOk.
func isAuthOK(msg []byte) bool {
	return len(msg) >= 9 && msg[0] == 'R' && binary.BigEndian.Uint32(msg[5:9]) == 0
}

// leftHotStandby turns the ParameterStatus "in_hot_standby on" of a session the standby started before its
// promotion into "off": by the confirmation the promotion is done (the backend reports it too, at its next
// ReadyForQuery), and a client that asked for a read-write server (libpq's target_session_attrs) reads it.
func leftHotStandby(msg []byte) []byte {
	if string(msg) != string(parameterStatus("in_hot_standby", "on")) {
		return msg
	}
	return parameterStatus("in_hot_standby", "off")
}

// parameterStatus builds a ParameterStatus message.
func parameterStatus(name, value string) []byte {
	body := append(append(append([]byte(name), 0), value...), 0)
	out := make([]byte, 5, 5+len(body))
	out[0] = 'S'
	binary.BigEndian.PutUint32(out[1:5], uint32(4+len(body)))
	return append(out, body...)
}
