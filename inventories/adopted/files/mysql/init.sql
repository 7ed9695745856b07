-- The platform's schema bootstrap, run by the MariaDB entrypoint on the first start (an empty data directory).
CREATE DATABASE IF NOT EXISTS astron_console;
CREATE TABLE IF NOT EXISTS astron_console.agent (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL);
INSERT IGNORE INTO astron_console.agent VALUES (1, 'adopted-init-script');
