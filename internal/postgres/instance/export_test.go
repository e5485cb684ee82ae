package instance

// PromoteAndWait is the statement Session.Promote runs first.
const PromoteAndWait = promoteAndWait
