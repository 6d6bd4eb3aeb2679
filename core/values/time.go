package values

import (
	"fmt"
	"strconv"
	"time"
)

// Dates and times are ISO 8601 JSON strings with microsecond precision,
// trailing fractional zeros trimmed ("2024-01-02T03:04:05.12Z"), since
// PostgreSQL keeps microseconds. Years use astronomical numbering as ISO 8601
// does: 1 BC is 0000, 44 BC is -0043; years past 9999 get more digits. The
// infinite timestamps and dates are the strings "infinity" and "-infinity".

const usPerDay = 24 * 60 * 60 * 1e6

// PostgreSQL's ranges of dates and times (datatype/timestamp.h), for the
// ingresses that get them as counts (Debezium: days, milliseconds, ... since
// 1970-01-01 or midnight), which can hold values no PostgreSQL column has.
const (
	// FirstUnixDay is the first date, 4714-11-24 BC, in days since 1970-01-01.
	FirstUnixDay = -2440588
	// EndUnixDay is the day after the last date, 5874898-01-01.
	EndUnixDay = 2145042906
	// DateRange describes the range of dates, for error messages.
	DateRange = "4714-11-24 BC to 5874897-12-31"
	// TimestampRange describes the range of timestamps (timestamptz in UTC).
	TimestampRange = "4714-11-24 00:00:00 BC to 294276-12-31 23:59:59.999999"
	// DayMicros is the last time of day, 24:00:00, in microseconds.
	DayMicros = usPerDay
	// TimeRange describes the range of times of day.
	TimeRange = "00:00:00 to 24:00:00"
	// MaxZoneOffset is the largest time zone offset of a timetz, 15:59:59,
	// in seconds.
	MaxZoneOffset = 16*3600 - 1
)

var (
	firstTimestamp = time.Date(-4713, 11, 24, 0, 0, 0, 0, time.UTC)
	endTimestamp   = time.Date(294277, 1, 1, 0, 0, 0, 0, time.UTC)
)

// InTimestampRange reports whether t is within PostgreSQL's range of
// timestamps (TimestampRange).
func InTimestampRange(t time.Time) bool {
	return !t.Before(firstTimestamp) && t.Before(endTimestamp)
}

// AppendTimestamp appends t as an ISO 8601 JSON string. A zoned value
// (timestamptz) is converted to UTC and marked "Z"; an unzoned one (timestamp)
// is t's clock reading, without zone. Sub-microsecond digits are dropped.
func AppendTimestamp(dst []byte, t time.Time, zoned bool) []byte {
	if zoned {
		t = t.UTC()
	}
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	dst = append(dst, '"')
	dst = appendDate(dst, year, int(month), day)
	dst = append(dst, 'T')
	dst = appendClock(dst, int64(hour), minute, sec, t.Nanosecond()/1000)
	if zoned {
		dst = append(dst, 'Z')
	}
	return append(dst, '"')
}

// AppendDate appends the date of t's clock reading as an ISO 8601 JSON string,
// "2006-01-02".
func AppendDate(dst []byte, t time.Time) []byte {
	year, month, day := t.Date()
	dst = append(dst, '"')
	dst = appendDate(dst, year, int(month), day)
	return append(dst, '"')
}

// AppendTime appends a time of day (time without time zone), given in
// microseconds since midnight, as an ISO 8601 JSON string "15:04:05.999999".
// PostgreSQL's 24:00:00 is kept as such; a time outside TimeRange is an
// error.
func AppendTime(dst []byte, micros int64) ([]byte, error) {
	if err := checkTime(micros); err != nil {
		return dst, err
	}
	dst = append(dst, '"')
	dst = appendMicros(dst, micros)
	return append(dst, '"'), nil
}

// AppendTimeTZ appends a time of day with zone offset (timetz), given in
// microseconds since midnight and seconds east of UTC, converted to UTC and
// marked "Z", wrapping around midnight: 01:00:00+02 is "23:00:00Z". A time
// outside TimeRange, or an offset beyond MaxZoneOffset, is an error.
func AppendTimeTZ(dst []byte, micros int64, offset int) ([]byte, error) {
	if err := checkTime(micros); err != nil {
		return dst, err
	}
	if offset < -MaxZoneOffset || offset > MaxZoneOffset {
		return dst, fmt.Errorf("time zone offset %d s is outside PostgreSQL's range (-15:59:59 to +15:59:59)", offset)
	}
	if offset != 0 {
		micros -= int64(offset) * 1e6
		micros %= usPerDay
		if micros < 0 {
			micros += usPerDay
		}
	}
	dst = append(dst, '"')
	dst = appendMicros(dst, micros)
	return append(dst, 'Z', '"'), nil
}

func checkTime(micros int64) error {
	if micros < 0 || micros > DayMicros {
		return fmt.Errorf("time of day %d µs is outside PostgreSQL's range (%s)", micros, TimeRange)
	}
	return nil
}

// AppendInfinity appends the JSON value of an infinite timestamp or date.
func AppendInfinity(dst []byte, negative bool) []byte {
	if negative {
		return append(dst, `"-infinity"`...)
	}
	return append(dst, `"infinity"`...)
}

func appendDate(dst []byte, year, month, day int) []byte {
	if year < 0 {
		dst = append(dst, '-')
		year = -year
	}
	if year > 9999 {
		dst = strconv.AppendInt(dst, int64(year/10000), 10)
		year %= 10000
	}
	dst = append(dst, byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10))
	return append(dst, '-', byte('0'+month/10), byte('0'+month%10), '-', byte('0'+day/10), byte('0'+day%10))
}

func appendMicros(dst []byte, micros int64) []byte {
	sec := micros / 1e6
	return appendClock(dst, sec/3600, int(sec/60%60), int(sec%60), int(micros%1e6))
}

func appendClock(dst []byte, hour int64, minute, sec, usec int) []byte {
	h := int(hour)
	dst = append(dst, byte('0'+h/10), byte('0'+h%10), ':', byte('0'+minute/10), byte('0'+minute%10),
		':', byte('0'+sec/10), byte('0'+sec%10))
	if usec == 0 {
		return dst
	}
	var f [7]byte
	f[0] = '.'
	for i := 6; i > 0; i-- {
		f[i] = byte('0' + usec%10)
		usec /= 10
	}
	n := 7
	for f[n-1] == '0' {
		n--
	}
	return append(dst, f[:n]...)
}
