package lostxact

// SwitchPoint is switchPoint, for the tests.
var SwitchPoint = switchPoint
