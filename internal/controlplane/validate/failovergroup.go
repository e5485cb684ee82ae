package validate

import (
	"strings"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// FailoverGroupSpec is the writable part of a failover group, validated.
type FailoverGroupSpec struct {
	Tags                 map[string]string
	ReadWritePolicy      string // Manual | Automatic
	GracePeriodMinutes   *int32 // nil when absent
	ReadOnlyPolicy       string // Disabled | Enabled
	ReadOnlyTargetServer string
	PartnerServers       []armid.ServerID
	Databases            []armid.DatabaseID
	SecondaryType        string // Geo | Standby
}

type rwEndpoint struct {
	FailoverPolicy *string `json:"failoverPolicy"`
	Grace          *int32  `json:"failoverWithDataLossGracePeriodMinutes"`
}

type roEndpoint struct {
	FailoverPolicy *string `json:"failoverPolicy"`
	TargetServer   *string `json:"targetServer"`
}

type partnerInfo struct {
	ID              *string `json:"id"`
	Location        *string `json:"location"`
	ReplicationRole *string `json:"replicationRole"`
}

type fgProperties struct {
	ReadWriteEndpoint *rwEndpoint    `json:"readWriteEndpoint"`
	ReadOnlyEndpoint  *roEndpoint    `json:"readOnlyEndpoint"`
	ReplicationRole   *string        `json:"replicationRole"`
	ReplicationState  *string        `json:"replicationState"`
	PartnerServers    *[]partnerInfo `json:"partnerServers"`
	Databases         *[]string      `json:"databases"`
	SecondaryType     *string        `json:"secondaryType"`
}

type fgBody struct {
	Tags       map[string]string `json:"tags"`
	Properties *fgProperties     `json:"properties"`
}

func readOnlyModified(prop string) error {
	return errcatalog.New("FailoverGroupCreateOrUpdateRequestReadOnlyPropertyModified", prop).WithTarget("properties." + prop)
}

// FailoverGroupPut validates a failover group PUT sent to server primary.
//
// Read-only properties: replicationRole may be sent only as "Primary" (the PUT goes to the primary) and a
// partner's replicationRole only as "Secondary", so a model read with GET and sent back is accepted; any other
// value is ReadOnlyPropertyModified. replicationState and partner locations are ignored (they are observations).
func FailoverGroupPut(body []byte, primary armid.ServerID, minGraceMinutes int32) (FailoverGroupSpec, error) {
	var b fgBody
	if err := decode(body, &b); err != nil {
		if err == errEmpty {
			return FailoverGroupSpec{}, errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalid")
		}
		return FailoverGroupSpec{}, err
	}
	if b.Properties == nil {
		return FailoverGroupSpec{}, errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalid")
	}
	spec := FailoverGroupSpec{Tags: b.Tags}
	if err := applyProperties(&spec, b.Properties, primary, true); err != nil {
		return spec, err
	}
	return spec, check(&spec, primary, minGraceMinutes)
}

// FailoverGroupUpdate validates a PATCH and merges it into current (the group's writable part now).
// partnerServers may be sent but must name the current partner (changing partners is not supported).
func FailoverGroupUpdate(body []byte, primary armid.ServerID, current FailoverGroupSpec, minGraceMinutes int32) (FailoverGroupSpec, error) {
	var b fgBody
	if err := decode(body, &b); err != nil {
		if err == errEmpty {
			return FailoverGroupSpec{}, errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalid")
		}
		return FailoverGroupSpec{}, err
	}
	spec := current
	if b.Tags != nil {
		spec.Tags = b.Tags
	}
	if b.Properties != nil {
		if err := applyProperties(&spec, b.Properties, primary, false); err != nil {
			return spec, err
		}
	}
	if len(spec.PartnerServers) == 1 && len(current.PartnerServers) == 1 && !spec.PartnerServers[0].Equal(current.PartnerServers[0]) {
		return spec, readOnlyModified("partnerServers")
	}
	return spec, check(&spec, primary, minGraceMinutes)
}

// applyProperties copies the given properties into spec; with create, absent required ones are errors.
func applyProperties(spec *FailoverGroupSpec, p *fgProperties, primary armid.ServerID, create bool) error {
	if p.ReplicationRole != nil && !strings.EqualFold(*p.ReplicationRole, "Primary") {
		return readOnlyModified("replicationRole")
	}
	if p.ReadWriteEndpoint != nil {
		if p.ReadWriteEndpoint.FailoverPolicy == nil {
			return errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidReadWriteFailoverPolicy")
		}
		pol, err := enum("properties.readWriteEndpoint.failoverPolicy", *p.ReadWriteEndpoint.FailoverPolicy, "Manual", "Automatic")
		if err != nil {
			return err
		}
		spec.ReadWritePolicy, spec.GracePeriodMinutes = pol, p.ReadWriteEndpoint.Grace
	} else if create {
		return errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpoint")
	}
	if p.ReadOnlyEndpoint != nil {
		spec.ReadOnlyPolicy = "Disabled"
		if p.ReadOnlyEndpoint.FailoverPolicy != nil {
			pol, err := enum("properties.readOnlyEndpoint.failoverPolicy", *p.ReadOnlyEndpoint.FailoverPolicy, "Disabled", "Enabled")
			if err != nil {
				return err
			}
			spec.ReadOnlyPolicy = pol
		}
		spec.ReadOnlyTargetServer = deref(p.ReadOnlyEndpoint.TargetServer)
	} else if create {
		spec.ReadOnlyPolicy = "Disabled"
	}
	if p.PartnerServers != nil {
		partners, err := parsePartners(*p.PartnerServers, primary)
		if err != nil {
			return err
		}
		spec.PartnerServers = partners
	} else if create {
		return errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidPartner")
	}
	if p.Databases != nil {
		dbs, err := parseDatabases(*p.Databases, primary)
		if err != nil {
			return err
		}
		spec.Databases = dbs
	}
	if p.SecondaryType != nil {
		st, err := enum("properties.secondaryType", *p.SecondaryType, "Geo", "Standby")
		if err != nil {
			return err
		}
		spec.SecondaryType = st
	}
	return nil
}

func parsePartners(in []partnerInfo, primary armid.ServerID) ([]armid.ServerID, error) {
	if len(in) == 0 {
		return nil, errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidPartner")
	}
	if len(in) > 1 {
		return nil, errcatalog.New("FailoverGroupCreateOrUpdateRequestUnsupportedPartnerCount")
	}
	pi := in[0]
	if pi.ID == nil {
		return nil, errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidPartner")
	}
	id, err := armid.ParseServerID(*pi.ID)
	if err != nil {
		return nil, errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidPartner")
	}
	if pi.ReplicationRole != nil && !strings.EqualFold(*pi.ReplicationRole, "Secondary") {
		return nil, readOnlyModified("partnerServers.replicationRole")
	}
	if !strings.EqualFold(id.Subscription, primary.Subscription) {
		return nil, errcatalog.New("FailoverGroupPartnerServerFromDifferentSubscription")
	}
	if id.Equal(primary) {
		return nil, errcatalog.New("FailoverGroupCreateOrUpdateRequestDuplicatePartner")
	}
	return []armid.ServerID{id}, nil
}

// parseDatabases parses database IDs; each must be on the primary server. Duplicates are merged.
func parseDatabases(in []string, primary armid.ServerID) ([]armid.DatabaseID, error) {
	seen := map[string]bool{}
	out := []armid.DatabaseID{}
	for _, raw := range in {
		id, err := armid.ParseDatabaseID(raw)
		if err != nil {
			return nil, errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidDatabases")
		}
		if !id.Server.Equal(primary) {
			return nil, errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidDatabaseServer")
		}
		if k := strings.ToLower(id.Name); !seen[k] {
			seen[k] = true
			out = append(out, id)
		}
	}
	return out, nil
}

// check applies the rules that span properties (the grace period against the policy).
func check(spec *FailoverGroupSpec, primary armid.ServerID, minGrace int32) error {
	switch spec.ReadWritePolicy {
	case "":
		return errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidReadWriteFailoverPolicy")
	case "Automatic":
		g := spec.GracePeriodMinutes
		switch {
		case g == nil:
			return errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpointFields")
		case *g < 0:
			return errcatalog.New("FailoverGroupCreateOrUpdateRequestNegativeGracePeriodValues")
		case *g < minGrace:
			return errcatalog.New("FailoverGroupCreateOrUpdateRequestLessThanMinimumGracePeriodValues", minGrace)
		}
	case "Manual":
		if spec.GracePeriodMinutes != nil {
			if *spec.GracePeriodMinutes < 0 {
				return errcatalog.New("FailoverGroupCreateOrUpdateRequestNegativeGracePeriodValues")
			}
			return errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpointFieldsForManualPolicy")
		}
	}
	if spec.ReadOnlyTargetServer != "" {
		id, err := armid.ParseServerID(spec.ReadOnlyTargetServer)
		if err != nil || (!id.Equal(primary) && (len(spec.PartnerServers) == 0 || !id.Equal(spec.PartnerServers[0]))) {
			return invalidValue("properties.readOnlyEndpoint.targetServer", "it must be the primary or the partner server of the group.")
		}
	}
	return nil
}
