// pgjdbc with prepareThreshold=1 (every PreparedStatement server-prepared, named, from its first
// execution): parameters of several types, a 20,000-row result, transactions, errors, a 1 MiB
// parameter, fetch-size cursors (portals with Execute row limits) that fail and are closed early,
// PreparedStatement.close (Close of the named statement, sent with the next query).
// Usage: java -cp postgresql.jar Pgjdbc.java HOST PORT USER DBNAME [STEP...] (single-file source mode);
// prints `STEP JSON` lines, then `done`.
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.*;
import java.util.*;

public class Pgjdbc {
    static final String FAILS_MIDWAY = "select 1 / (5000 - g) as v from generate_series(1, 10000) g";
    static final String FAILS_AT_START = "select * from drivers_no_such_table";
    static Connection conn;

    static String json(Object v) {
        if (v == null) return "null";
        if (v instanceof Number || v instanceof Boolean) return v.toString();
        if (v instanceof byte[]) {
            StringBuilder sb = new StringBuilder("\"");
            for (byte b : (byte[]) v) sb.append(String.format("%02x", b));
            return sb.append('"').toString();
        }
        if (v instanceof List) {
            StringJoiner j = new StringJoiner(",", "[", "]");
            for (Object o : (List<?>) v) j.add(json(o));
            return j.toString();
        }
        String s = v.toString();
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') sb.append('\\').append(c);
            else if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
            else sb.append(c);
        }
        return sb.append('"').toString();
    }

    static void emit(String step, Object value) {
        System.out.println(step + " " + json(value));
        System.out.flush();
    }

    static List<Object> state(SQLException e) {
        return List.of(e.getSQLState(), e.getMessage().replaceFirst("^ERROR: ", "").split("\n")[0]);
    }

    static Object one(String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                return rs.getObject(1);
            }
        }
    }

    static void params() throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(
                "select ?::int4 + 1 as i, ?::text as t, ?::numeric as n, ?::bool as b, ?::date::text as d,"
                + " ?::float8 as f, ?::bytea as by, ?::text as nul, ?::int8 as big")) {
            ps.setInt(1, 41);
            ps.setString(2, "héllo wörld");
            ps.setBigDecimal(3, new BigDecimal("1.50"));
            ps.setBoolean(4, true);
            ps.setDate(5, java.sql.Date.valueOf("2024-02-29"));
            ps.setDouble(6, 0.25);
            ps.setBytes(7, new byte[] {0, 1, (byte) 255});
            ps.setNull(8, Types.VARCHAR);
            ps.setLong(9, 9007199254740993L);
            try (ResultSet rs = ps.executeQuery()) {
                ResultSetMetaData md = rs.getMetaData();
                List<Object> row = new ArrayList<>(), types = new ArrayList<>(), names = new ArrayList<>();
                rs.next();
                for (int i = 1; i <= md.getColumnCount(); i++) {
                    row.add(rs.getObject(i));
                    types.add(md.getColumnTypeName(i));
                    names.add(md.getColumnLabel(i));
                }
                emit("params", List.of(row, types, names));
            }
        }
    }

    static void rows() throws Exception {
        MessageDigest sha = MessageDigest.getInstance("SHA-256");
        long count = 0, sum = 0;
        try (PreparedStatement ps = conn.prepareStatement("select g, md5(g::text) as m from generate_series(1, ?) g")) {
            ps.setInt(1, 20000);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    if (count++ > 0) sha.update((byte) '\n');
                    sum += rs.getLong(1);
                    sha.update(rs.getString(2).getBytes(StandardCharsets.UTF_8));
                }
            }
        }
        StringBuilder hex = new StringBuilder();
        for (byte b : sha.digest()) hex.append(String.format("%02x", b));
        emit("rows", List.of(count, sum, hex.toString()));
    }

    static void transaction() throws SQLException {
        try (Statement st = conn.createStatement()) {
            st.execute("create temp table drivers_t (id int primary key, v text)");
        }
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("insert into drivers_t values (?, ?)")) {
            for (int i = 0; i < 3; i++) {
                ps.setInt(1, i);
                ps.setString(2, "v" + i);
                ps.addBatch();
            }
            ps.executeBatch();
        }
        Object inside = one("select count(*) from drivers_t");
        conn.rollback();
        Object after = one("select count(*) from drivers_t");
        conn.commit();
        conn.setAutoCommit(true);
        emit("transaction", List.of(inside, after));
    }

    static void error() throws SQLException {
        List<Object> seen = new ArrayList<>();
        try { one("select 1 / ?::int", 0); } catch (SQLException e) { seen.add(state(e)); }
        conn.setAutoCommit(false);
        for (String sql : new String[] {"select 1 / ?::int", "select ?::int"}) {
            try { one(sql, 0); } catch (SQLException e) { seen.add(state(e)); }
        }
        conn.rollback();
        conn.setAutoCommit(true);
        seen.add(one("select ?::text", "still alive"));
        emit("error", seen);
    }

    static void bigParam() throws SQLException {
        String big = "x".repeat(1048576);
        Object length = one("select length(?::text)", big);
        Object md5 = one("select md5(?::text)", big);
        String back = (String) one("select repeat('y', ?)", big.length());
        emit("big_param", List.of(length, md5, back.length()));
    }

    static void failedCursor() throws SQLException {
        List<Object> seen = new ArrayList<>();
        conn.setAutoCommit(false); // a fetch size makes pgjdbc read a portal in batches only in a transaction
        for (String sql : new String[] {FAILS_MIDWAY, FAILS_AT_START}) {
            int n = 0;
            try (PreparedStatement ps = conn.prepareStatement(sql)) {
                ps.setFetchSize(100);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) n++;
                }
                seen.add(List.of(n));
            } catch (SQLException e) {
                seen.add(List.of(n, state(e)));
            }
            conn.rollback();
            seen.add(one("select ?::text", "after the cursor"));
            conn.commit();
        }
        conn.setAutoCommit(true);
        emit("failed_cursor", seen);
    }

    static void close() throws SQLException {
        List<Object> seen = new ArrayList<>();
        PreparedStatement ps = conn.prepareStatement("select ?::int * 2");
        for (int i = 0; i < 3; i++) {
            ps.setInt(1, i);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                seen.add(rs.getInt(1));
            }
        }
        ps.close(); // Close of the server-prepared statement, queued before the next query's messages
        seen.add(one("select ?::text", "after the close"));
        seen.add(one("select count(*) from pg_prepared_statements where statement like '%::int * 2%'"));
        conn.setAutoCommit(false);
        try (PreparedStatement cur = conn.prepareStatement("select g from generate_series(1, 1000) g")) {
            cur.setFetchSize(10);
            List<Object> first = new ArrayList<>();
            try (ResultSet rs = cur.executeQuery()) { // closed after 5 rows: Close of the portal
                for (int i = 0; i < 5 && rs.next(); i++) first.add(rs.getInt(1));
            }
            seen.add(first);
        }
        seen.add(one("select ?::text", "after the closed portal"));
        conn.commit();
        conn.setAutoCommit(true);
        emit("close", seen);
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[2]);
        props.setProperty("prepareThreshold", "1");
        props.setProperty("connectTimeout", "30");
        conn = DriverManager.getConnection("jdbc:postgresql://" + args[0] + ":" + args[1] + "/" + args[3], props);
        List<String> only = args.length > 4 ? Arrays.asList(args).subList(4, args.length)
                : List.of("params", "rows", "transaction", "error", "big_param", "failed_cursor", "close");
        for (String step : only) {
            switch (step) {
                case "params": params(); break;
                case "rows": rows(); break;
                case "transaction": transaction(); break;
                case "error": error(); break;
                case "big_param": bigParam(); break;
                case "failed_cursor": failedCursor(); break;
                case "close": close(); break;
                default: throw new IllegalArgumentException(step);
            }
        }
        System.out.println("done");
        conn.close();
    }
}
