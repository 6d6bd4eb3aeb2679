package pgtest

// BemiMigration is what the Bemi ORM packages' migration installs: the trigger
// function that emits the statement's /*Bemi ... Bemi*/ comment as a `_bemi`
// logical decoding message before each row change, and a trigger on every
// table of schema public. Tests, the demo and the benchmarks install it to
// drive pgtrail exactly as a Bemi application does.
const BemiMigration = `
CREATE OR REPLACE FUNCTION _bemi_row_trigger_func() RETURNS TRIGGER AS $$
DECLARE
  _bemi_metadata TEXT;
BEGIN
  SELECT split_part(split_part(current_query(), '/*Bemi ', 2), ' Bemi*/', 1) INTO _bemi_metadata;
  IF _bemi_metadata <> '' THEN
    PERFORM pg_logical_emit_message(true, '_bemi', _bemi_metadata);
  END IF;
  IF (TG_OP = 'DELETE') THEN
    RETURN OLD;
  END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE PROCEDURE _bemi_create_triggers() AS $$
DECLARE
  current_tablename TEXT;
BEGIN
  FOR current_tablename IN
    SELECT tablename FROM pg_tables
    LEFT JOIN information_schema.triggers ON tablename = event_object_table AND schemaname = trigger_schema AND trigger_name LIKE '_bemi_row_trigger_%'
    WHERE schemaname = 'public' AND trigger_name IS NULL
    GROUP BY tablename
  LOOP
    EXECUTE format(
      'CREATE OR REPLACE TRIGGER _bemi_row_trigger_%s BEFORE INSERT OR UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION _bemi_row_trigger_func()',
      current_tablename, current_tablename);
  END LOOP;
END;
$$ LANGUAGE plpgsql;

CALL _bemi_create_triggers();
`
