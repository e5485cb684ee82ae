package link

// SetAfterMerge sets a function run after each table a snapshot was merged into (nil: none).
func SetAfterMerge(f func(table string) error) { afterMerge = f }
