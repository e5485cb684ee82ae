package validate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/fogo-db/fogo/internal/errcatalog"
)

// decode unmarshals body into v with errors that name the field.
func decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errEmpty
	}
	err := json.Unmarshal(body, v)
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &syn):
		return errcatalog.Newf("InvalidRequestContent", "The request content was invalid and could not be deserialized: %s at offset %d.", syn.Error(), syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "(root)"
		}
		return errcatalog.Newf("InvalidRequestContent", "The request content was invalid and could not be deserialized: the value of '%s' must be %s, not a JSON %s.", field, typeName(typ.Type.String()), typ.Value).WithTarget(field)
	default:
		return errcatalog.Newf("InvalidRequestContent", "The request content was invalid and could not be deserialized: %v.", err)
	}
}

var errEmpty = errors.New("empty body")

func typeName(goType string) string {
	t := strings.TrimPrefix(goType, "*")
	switch {
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer (" + t + ")"
	case t == "string":
		return "a string"
	case t == "bool":
		return "a boolean"
	case strings.HasPrefix(t, "[]"):
		return "an array"
	case strings.HasPrefix(t, "map"), strings.Contains(t, "struct"), strings.Contains(t, "."):
		return "an object"
	}
	return t
}

// enum matches v case-insensitively against allowed and returns the canonical spelling.
func enum(field, v string, allowed ...string) (string, error) {
	for _, a := range allowed {
		if strings.EqualFold(a, v) {
			return a, nil
		}
	}
	return "", errcatalog.Newf("InvalidRequestContent", "The value '%s' of '%s' is not valid. Allowed values: %s.", v, field, strings.Join(allowed, ", ")).WithTarget(field)
}

func invalidValue(field, format string, args ...any) error {
	return errcatalog.Newf("InvalidParameterValue", "Invalid value given for parameter %s: %s", field, fmt.Sprintf(format, args...)).WithTarget(field)
}
