package service

import (
	"context"
	"strings"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
)

// GroupHealth is a load balancer's view of one server in a failover group.
type GroupHealth struct {
	Group            string `json:"group"`
	Server           string `json:"server"`
	Role             string `json:"role"` // Primary, Secondary, or "" when the server is not in the group
	Healthy          bool   `json:"healthy"`
	ReplicationState string `json:"replicationState"`
	Epoch            int64  `json:"epoch"`
}

// Health reports whether `server` (a name; server names are global) is the group's primary with every primary
// instance answering as a primary, or its secondary with every geo-secondary streaming.
func (s *Service) Health(ctx context.Context, group, server string) (*GroupHealth, error) {
	var g model.FailoverGroup
	err := s.st.View(func(tx *store.Tx) error {
		ok, err := tx.Get(store.Groups, model.GroupKey(group), &g)
		if err == nil && !ok {
			err = ErrUnknownGroup
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	h := &GroupHealth{Group: g.Name, Server: server, ReplicationState: s.obs.GroupState(&g), Epoch: g.Epoch}
	switch {
	case strings.EqualFold(g.Primary.Name, server):
		h.Role = "Primary"
		h.Healthy = s.obs.unavailablePrimary(ctx, &g) == ""
	case strings.EqualFold(g.Secondary.Name, server):
		h.Role = "Secondary"
		h.Healthy = h.ReplicationState == model.StateCatchUp
	}
	return h, nil
}

// GroupsWithInstances returns every group and the instances by ID (for metrics).
func (s *Service) GroupsWithInstances() ([]model.FailoverGroup, map[string]model.Instance, error) {
	var groups []model.FailoverGroup
	insts := map[string]model.Instance{}
	err := s.st.View(func(tx *store.Tx) error {
		var err error
		if groups, err = store.List[model.FailoverGroup](tx, store.Groups, ""); err != nil {
			return err
		}
		all, err := store.List[model.Instance](tx, store.Instances, "")
		for _, in := range all {
			insts[in.ID] = in
		}
		return err
	})
	return groups, insts, err
}
