package model

import (
	"encoding/json"
	"time"
)

// Operation statuses, as ARM's operation-status resource spells them.
const (
	OpInProgress = "InProgress"
	OpSucceeded  = "Succeeded"
	OpFailed     = "Failed"
	OpCanceled   = "Canceled"
)

// Operation kinds.
const (
	OpCreateServer   = "CreateServer"
	OpDeleteServer   = "DeleteServer"
	OpCreateDatabase = "CreateDatabase"
	OpDeleteDatabase = "DeleteDatabase"
	OpUpsertGroup    = "UpsertFailoverGroup"
	OpDeleteGroup    = "DeleteFailoverGroup"
	OpPlanned        = "PlannedFailover"
	OpForced         = "ForcedFailover"
	OpTryPlanned     = "TryPlannedBeforeForcedFailover"
)

// OpError is the ARM error an operation failed with.
type OpError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Status  int    `json:"status"`
}

// Operation is a durable long-running operation: the API creates it and reads it; only the runner advances it.
type Operation struct {
	ID       string `json:"id"`
	Kind     string `json:"kind"`
	Status   string `json:"status"`
	Location string `json:"location"` // region, for the operation URLs
	// Resource is the ARM id the request was sent to; ResultKind tells the API how to render the final result
	// ("server", "database", "failoverGroup", or "" for none: a delete).
	Resource   string          `json:"resource"`
	ResultKind string          `json:"resultKind,omitempty"`
	Step       string          `json:"step,omitempty"`
	Attempts   int             `json:"attempts,omitempty"`
	Params     json.RawMessage `json:"params,omitempty"`
	Error      *OpError        `json:"error,omitempty"`
	Created    time.Time       `json:"created"`
	Finished   time.Time       `json:"finished,omitzero"`
	// Log is a short human-readable trail of steps, shown in the operation status.
	Log []string `json:"log,omitempty"`
	// Warnings are what the caller should know although the operation went on (shown in the status).
	Warnings []string `json:"warnings,omitempty"`
}

// IsFailover reports whether the operation is a failover (planned, forced, or planned before forced).
func (o *Operation) IsFailover() bool {
	switch o.Kind {
	case OpPlanned, OpForced, OpTryPlanned:
		return true
	}
	return false
}

// Done reports whether the operation reached a terminal status.
func (o *Operation) Done() bool { return o.Status != OpInProgress }
